"""Which model answers a search: the one asked for, else the newest model that has an index.

`train` stores a model before anything is embedded or indexed with it, so "the newest trained
model" (the default of `embed` and `index`) may not be searchable yet. A search without
`--model` takes the newest trained model that has an index of the target modality (else the
newest frozen one that has: a baseline, a published encoder), and says which, and which newer
models it passed over. A model without an index is one message naming every command it still
needs (`embed`, then `index`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import is_frozen_recipe, list_models, resolve_model_id
from threads_search.errors import AtlasError


@dataclass(frozen=True)
class SearchModel:
    """The model a search uses: its id, recipe, when its `modality` index was built (UTC),
    whether it was chosen by default, and the newer trained models passed over for having no
    index of `modality`."""

    model_id: str
    recipe: str
    modality: str
    indexed_at: datetime
    defaulted: bool
    passed_over: tuple[str, ...] = ()

    def describe(self, atlas: Atlas) -> str:
        """One line for the terminal, e.g. 'searching with model 3f2a... (threads-abmil-cpu, slides
        index built 2026-12-01 19:20 UTC)', plus what a newer model passed over still needs."""
        line = (f"searching with model {self.model_id} ({self.recipe}, {self.modality} index built "
                f"{self.indexed_at:%Y-%m-%d %H:%M} UTC)")
        if self.passed_over:
            newer = self.passed_over[0]
            line += f"; the newer model {newer} is not searchable yet: {_needed_commands(atlas, newer, self.modality)}"
        return line


def resolve_search_model(atlas: Atlas, requested: str | None, modality: str, sharded: bool = False) -> SearchModel:
    """The model to search `modality` with: `requested` (id, prefix or recipe) if it has an index
    of it, else the newest trained model with one, else the newest model of any kind with one.

    sharded: also count sharded indexes (`index --shards`, served by `serve --ray`).
    Raises AtlasError (one line naming the commands to run) when that model has no index.
    """
    built = index_build_times(atlas, sharded)
    if requested:
        model_id = resolve_model_id(atlas, requested)
        if (model_id, modality) not in built:
            raise missing_index_error(atlas, model_id, modality)
        return SearchModel(model_id, _recipe(atlas, model_id), modality, built[(model_id, modality)], False)
    newest = resolve_model_id(atlas)  # no model at all: "run train first"
    rows = list_models(atlas)
    ordered = [row for row in rows if not is_frozen_recipe(row[1])] + [row for row in rows if is_frozen_recipe(row[1])]
    passed_over = []
    for model_id, recipe in ordered:
        if (model_id, modality) in built:
            return SearchModel(model_id, recipe, modality, built[(model_id, modality)], True, tuple(passed_over))
        if not is_frozen_recipe(recipe):
            passed_over.append(model_id)
    raise missing_index_error(atlas, newest, modality, "no model of the atlas has one yet")


def missing_index_error(atlas: Atlas, model_id: str, modality: str, context: str | None = None) -> AtlasError:
    """'model X has no slides index[ (context)]: run `embed ...` then `index ...`' (embed only when
    the model has not embedded that modality)."""
    where = f" ({context})" if context else ""
    return AtlasError(f"model {model_id} has no {modality} index{where}: {_needed_commands(atlas, model_id, modality)}")


def index_build_times(atlas: Atlas, sharded: bool = False) -> dict[tuple[str, str], datetime]:
    """(model_id, modality) -> when its index was built, for every recorded index (and every
    sharded one with `sharded`)."""
    def read(table: str) -> dict[tuple[str, str], datetime]:
        rows = atlas.sql(f"SELECT model_id, modality, max(built_at) FROM {table} GROUP BY ALL").fetchall()
        return {(model_id, modality): built_at for model_id, modality, built_at in rows}

    times = dict(atlas.cached("index build times", lambda: read("indexes")))
    if sharded:
        for key, built_at in atlas.cached("shard build times", lambda: read("index_shards")).items():
            times.setdefault(key, built_at)
    return times


def _needed_commands(atlas: Atlas, model_id: str, modality: str) -> str:
    index = f"`threads-search index {atlas.root} --model {model_id}`"
    (n_parts,) = atlas.sql("SELECT count(*) FROM embeddings WHERE model_id = ? AND modality = ?",
                           [model_id, modality]).fetchone()
    if n_parts:
        return f"run {index}"
    return f"run `threads-search embed {atlas.root} --model {model_id}` then {index}"


def _recipe(atlas: Atlas, model_id: str) -> str:
    return dict(list_models(atlas))[model_id]
