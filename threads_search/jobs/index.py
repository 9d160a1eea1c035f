"""`index`: embeddings of one model -> one FAISS index per modality under `indexes/`.

An existing index takes new items incrementally where its kind allows; otherwise, or with
`rebuild`, it is built anew. Its sidecar records the model id, and queries check it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.indexes import forget_index, index_location, record_index
from threads_search.atlas.layout import new_index_stem
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError, IndexFileError, InputError


@dataclass
class IndexReport:
    model_id: str
    built: dict[str, dict] = field(default_factory=dict)  # modality -> sidecar
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_atlas_indexes(atlas: Atlas, model_id: str, kind: str = "auto", device: str = "auto",
                        max_memory: int | None = None, rebuild: bool = False, seed: int = 0) -> IndexReport:
    """Index every modality the model has embedded.

    An index is brought up to the atlas's items: new items are added, removed or replaced ones
    taken out, where its kind allows; otherwise (or with `rebuild`) it is built anew. Every
    change is written to new files, recorded, and only then are the old files deleted, so the
    recorded index is always complete.
    """
    from threads_search.indexer import add_vectors, build_index, load_index, remove_vectors

    report = IndexReport(model_id=model_id)
    for modality in MODALITIES:
        ids, vectors = load_embeddings(atlas, model_id, modality)
        recorded = index_location(atlas, model_id, modality)
        if ids.size == 0:
            if recorded is not None:  # every item it held is gone
                _drop(atlas, model_id, modality)
                report.dropped.append(modality)
            continue
        existing = None
        if not rebuild and recorded is not None and atlas.path(recorded + ".faiss").exists():
            try:
                existing = load_index(atlas.path(recorded), device="cpu")
            except IndexFileError as error:
                report.notes.append(f"{modality}: {error}; rebuilding")
        if existing is not None and (kind in ("auto", existing.kind)):
            missing = ~existing.holds(ids)
            stale = np.setdiff1d(existing.sorted_ids(), ids)
            if not missing.any() and stale.size == 0:
                report.unchanged.append(modality)
                continue
            try:
                remove_vectors(existing, stale)
                if missing.any():
                    add_vectors(existing, vectors[missing], ids[missing])
                _publish(atlas, model_id, modality, existing)
                report.added[modality] = int(missing.sum())
                if stale.size:
                    report.removed[modality] = int(stale.size)
                continue
            except InputError as refusal:  # kind cannot change further: rebuild
                report.notes.append(f"{modality}: {refusal}; rebuilding")
        try:
            built = build_index(vectors, ids, kind=kind, device=device, max_memory=max_memory, seed=seed,
                                model_id=model_id, modality=modality)
        except InputError as refusal:  # one modality's vectors refused: say so, index the others
            report.notes.append(f"{modality}: not indexed ({refusal})")
            continue
        _publish(atlas, model_id, modality, built)
        report.built[modality] = built.sidecar
    if not (report.built or report.added or report.unchanged or report.notes or report.dropped):
        raise AtlasError(f"model {model_id} has no embeddings; run `threads-search embed {atlas.root} --model {model_id}` first")
    return report


def _publish(atlas: Atlas, model_id: str, modality: str, bundle) -> None:
    """Save `bundle` under a new stem and record it; the previous files stay for readers of older
    generations until the writer's garbage collection finds them unreferenced."""
    from threads_search.indexer import save_index
    from threads_search.indexer.persist import index_paths

    stem = new_index_stem(model_id, modality)
    save_index(bundle, atlas.path(stem))
    try:
        record_index(atlas, model_id, modality, stem, bundle.sidecar)
    except BaseException:
        for path in index_paths(atlas.path(stem)):
            path.unlink(missing_ok=True)
        raise


def _drop(atlas: Atlas, model_id: str, modality: str) -> None:
    forget_index(atlas, model_id, modality)  # its files go with the writer's garbage collection


def open_index(atlas: Atlas, model_id: str, modality: str, device: str = "auto"):
    """The index of (model, modality), checked to belong to that model."""
    from threads_search.indexer import load_index

    stem = index_location(atlas, model_id, modality)
    if stem is None:
        from threads_search.atlas.search_default import missing_index_error

        raise missing_index_error(atlas, model_id, modality)
    # Index files never change once recorded: an opened atlas loads each once (mapped, for readers).
    loaded = atlas.cached_file(("index", stem, device),
                               lambda: load_index(atlas.path(stem), device=device, mmap=atlas.read_only))
    recorded = loaded.sidecar.get("model_id")
    if recorded != model_id:
        from threads_search.errors import ModelMismatchError

        raise ModelMismatchError(f"{atlas.path(stem)}.faiss was built from model {recorded}, not {model_id}; "
                                 f"rebuild with `threads-search index {atlas.root} --model {model_id} --rebuild`")
    return loaded
