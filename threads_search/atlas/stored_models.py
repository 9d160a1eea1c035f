"""Models inside the atlas: `models/<model_id>/` (config.json + model.safetensors) and the `models` table."""

from __future__ import annotations

import json
import shutil

from threads_search.atlas import layout
from threads_search.atlas.store import Atlas, utc_now
from threads_search.errors import AtlasError

BASELINE_RECIPES = ("meanpool",)


def store_model(atlas: Atlas, model, provenance: dict | None = None) -> str:
    """Save a model into the atlas (idempotent: same weights -> same id) and record it."""
    return store_models(atlas, [(model, provenance)])[0]


def store_models(atlas: Atlas, models: list[tuple[object, dict | None]]) -> list[str]:
    """Save several models and record them in ONE transaction (a model and its baseline: both or neither)."""
    from threads_search.encoders.checkpoint import model_id as content_id
    from threads_search.encoders.checkpoint import save_model

    identifiers, created = [], []
    try:
        for model, _ in models:
            identifier = content_id(model)
            relative = layout.model_folder(identifier)
            if not atlas.path(relative).exists():
                created.append(atlas.path(relative))
            save_model(model, atlas.path(relative))
            identifiers.append(identifier)
        with atlas.transaction():
            for identifier, (model, provenance) in zip(identifiers, models):
                atlas.sql("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                          [identifier, model.recipe, layout.model_folder(identifier),
                           json.dumps(provenance or {}, sort_keys=True, default=str), utc_now()])
    except BaseException:
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return identifiers


def record_model_files(atlas: Atlas, model_id: str, recipe: str, provenance: dict, files: list[dict]) -> None:
    """Record a saved model (inside the caller's transaction) whose provenance lists the files it
    was made from ({file, fingerprint, ...}); files already listed are not repeated, and a model
    recorded before keeps its creation time."""
    row = atlas.sql("SELECT config, created_at FROM models WHERE model_id = ?", [model_id]).fetchone()
    previous = json.loads(row[0]) if row else {}
    listed = previous.get("files", [])
    seen = {(f["file"], f["fingerprint"]) for f in listed}
    merged = {**provenance, "files": listed + [f for f in files if (f["file"], f["fingerprint"]) not in seen]}
    atlas.sql("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
              [model_id, recipe, layout.model_folder(model_id), json.dumps(merged, sort_keys=True),
               row[1] if row else utc_now()])


def is_frozen_recipe(recipe: str) -> bool:
    """A baseline or published encoder (not a model trained in this atlas); unknown recipes count as trained."""
    from threads_search.encoders.registry import get_model_spec
    from threads_search.errors import InputError

    if recipe in BASELINE_RECIPES:
        return True
    try:
        return get_model_spec(recipe).frozen
    except InputError:
        return False


def list_models(atlas: Atlas) -> list[tuple[str, str]]:
    """(model_id, recipe) of every stored model, newest first."""
    return atlas.cached("models", lambda: [tuple(r) for r in atlas.sql(
        "SELECT model_id, recipe FROM models ORDER BY created_at DESC, model_id").fetchall()])


def model_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT model_id, recipe, created_at, config FROM models ORDER BY created_at").fetchall()
    return [{"model_id": i, "recipe": r, "created_at": str(c), "provenance": json.loads(p or "{}")} for i, r, c, p in rows]


def model_recipe(atlas: Atlas, model_id: str) -> str:
    row = atlas.sql("SELECT recipe FROM models WHERE model_id = ?", [model_id]).fetchone()
    if row is None:
        raise AtlasError(f"model {model_id} is not in {atlas.root}")
    return row[0]


def resolve_model_id(atlas: Atlas, requested: str | None = None, trained_only: bool = False) -> str:
    """A full model id from a prefix or a recipe name (its newest model), or the newest trained model
    (newest of any kind if none is trained)."""
    rows = list_models(atlas)
    if not rows:
        raise AtlasError(f"{atlas.root}: no model yet; run `threads-search train {atlas.root}` first")
    if requested:
        by_recipe = models_named(atlas, requested)
        if by_recipe:  # a recipe name (meanpool, feather ...) or a precomputed set's --encoder: its newest model
            return by_recipe[0]
        matches = [model for model, _ in rows if model.startswith(requested)]
        if len(matches) != 1:
            known = ", ".join(f"{m} ({r})" for m, r in rows)
            raise AtlasError(f"--model {requested}: {'no' if not matches else 'several'} matching model(s); known: {known}")
        return matches[0]
    trained = [model for model, recipe in rows if not is_frozen_recipe(recipe)]
    if trained:
        return trained[0]
    if trained_only:
        raise AtlasError(f"{atlas.root}: no trained model yet; run `threads-search train {atlas.root}` first")
    return rows[0][0]


def models_named(atlas: Atlas, name: str) -> list[str]:
    """Stored models of recipe `name`, else the precomputed sets ingested as `--encoder name`; newest first."""
    return [model for model, recipe in list_models(atlas) if recipe == name] or _precomputed_named(atlas, name)


def _precomputed_named(atlas: Atlas, encoder: str) -> list[str]:
    return [r[0] for r in atlas.sql("SELECT model_id FROM models WHERE recipe = 'precomputed' AND "
                                    "json_extract_string(config, '$.encoder') = ? ORDER BY created_at DESC, model_id",
                                    [encoder]).fetchall()]


def model_folder_path(atlas: Atlas, model_id: str):
    """The folder (config.json + model.safetensors) of a recorded model."""
    row = atlas.sql("SELECT path FROM models WHERE model_id = ?", [model_id]).fetchone()
    if row is None:
        raise AtlasError(f"model {model_id} is not in {atlas.root}")
    return atlas.path(row[0])


def load_atlas_model(atlas: Atlas, model_id: str):
    """The model object for a recorded id (verified against its content hash)."""
    from threads_search.encoders.checkpoint import load_model, read_model_id
    from threads_search.errors import AtlasDamagedError, ThreadsSearchError

    folder = model_folder_path(atlas, model_id)
    hint = f"run `threads-search check {atlas.root} --repair`, then train or ingest the model again"
    try:
        held = read_model_id(folder)
        if held != model_id:
            raise AtlasDamagedError(f"{folder}: holds model {held}, not the recorded {model_id}; {hint}")
        return load_model(folder)
    except AtlasDamagedError:
        raise
    except ThreadsSearchError as error:
        raise AtlasDamagedError(f"{error}; {hint}") from None


def baseline_model_id(atlas: Atlas) -> str | None:
    row = atlas.sql("SELECT model_id FROM models WHERE recipe = 'meanpool' ORDER BY created_at DESC LIMIT 1").fetchone()
    return row[0] if row else None
