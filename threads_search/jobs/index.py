"""`index`: embeddings of one model -> one FAISS index per modality under `indexes/`.

An existing index takes new items incrementally where its kind allows; otherwise, or with
`rebuild`, it is built anew. Its sidecar records the model id, and queries check it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from threads_search.atlas.embeddings import load_embeddings
from threads_search.atlas.indexes import index_location, record_index
from threads_search.atlas.layout import index_stem
from threads_search.atlas.schema import MODALITIES
from threads_search.atlas.store import Atlas
from threads_search.errors import AtlasError, IndexFileError, InputError


@dataclass
class IndexReport:
    model_id: str
    built: dict[str, dict] = field(default_factory=dict)  # modality -> sidecar
    added: dict[str, int] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def build_atlas_indexes(atlas: Atlas, model_id: str, kind: str = "auto", device: str = "auto",
                        max_memory: int | None = None, rebuild: bool = False, seed: int = 0) -> IndexReport:
    """Index every modality the model has embedded."""
    from threads_search.indexer import add_vectors, build_index, load_index, save_index

    report = IndexReport(model_id=model_id)
    for modality in MODALITIES:
        ids, vectors = load_embeddings(atlas, model_id, modality)
        if ids.size == 0:
            continue
        stem = index_stem(model_id, modality)
        existing = None
        if not rebuild and atlas.path(stem + ".faiss").exists():
            try:
                existing = load_index(atlas.path(stem), device="cpu")
            except IndexFileError as error:
                report.notes.append(f"{modality}: {error}; rebuilding")
        if existing is not None and (kind in ("auto", existing.kind)):
            missing = ~existing.holds(ids)
            if not missing.any():
                report.unchanged.append(modality)
                continue
            try:
                add_vectors(existing, vectors[missing], ids[missing])
                save_index(existing, atlas.path(stem))
                record_index(atlas, model_id, modality, stem, existing.sidecar)
                report.added[modality] = int(missing.sum())
                continue
            except InputError as refusal:  # kind cannot grow further: rebuild
                report.notes.append(f"{modality}: {refusal}; rebuilding")
        try:
            built = build_index(vectors, ids, kind=kind, device=device, max_memory=max_memory, seed=seed,
                                model_id=model_id, modality=modality)
        except InputError as refusal:  # one modality's vectors refused: say so, index the others
            report.notes.append(f"{modality}: not indexed ({refusal})")
            continue
        save_index(built, atlas.path(stem))
        record_index(atlas, model_id, modality, stem, built.sidecar)
        report.built[modality] = built.sidecar
    if not (report.built or report.added or report.unchanged or report.notes):
        raise AtlasError(f"model {model_id} has no embeddings; run `threads-search embed {atlas.root} --model {model_id}` first")
    return report


def open_index(atlas: Atlas, model_id: str, modality: str, device: str = "auto"):
    """The index of (model, modality), checked to belong to that model."""
    from threads_search.indexer import load_index

    stem = index_location(atlas, model_id, modality)
    if stem is None:
        raise AtlasError(f"no {modality} index for model {model_id}; run `threads-search index {atlas.root} --model {model_id}`")
    loaded = load_index(atlas.path(stem), device=device)
    recorded = loaded.sidecar.get("model_id")
    if recorded != model_id:
        from threads_search.errors import ModelMismatchError

        raise ModelMismatchError(f"{atlas.path(stem)}.faiss was built from model {recorded}, not {model_id}; "
                                 f"rebuild with `threads-search index {atlas.root} --model {model_id} --rebuild`")
    return loaded
