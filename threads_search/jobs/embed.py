"""`embed`: every slide and profile of the atlas through one model -> Parquet embedding parts.

Resumable: items already embedded with the model are skipped, and each finished chunk is
committed as its own part, so an interrupted run loses at most one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from threads_search.atlas.embeddings import MAX_PARTS, compact, embedded_vids, load_embeddings, part_count, write_part
from threads_search.atlas.items import count_items, vid_by_item
from threads_search.atlas.profiles import load_profiles
from threads_search.atlas.schema import MODALITIES, PROFILE_MODALITIES
from threads_search.atlas.slides import AtlasSlide, encode_atlas_slide, slide_items, slide_records
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import load_atlas_model, models_named, resolve_model_id, store_model

SLIDES_PER_PART = 64
Progress = Callable[[int, int, str], None]
# (slides to embed, progress) -> chunks of (vids (n,) int64, vectors (n, dim) float32): who encodes the
# slides. The local job encodes them here; `threads_search.distributed.embed` on a Ray actor pool.
SlideChunks = Callable[[list[AtlasSlide], Progress | None], Iterator[tuple[np.ndarray, np.ndarray]]]


@dataclass
class EmbedReport:
    model_id: str
    embedded: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    compacted: dict[str, int] = field(default_factory=dict)  # modality -> parts after compaction


def embed_atlas(atlas: Atlas, model_id: str, progress: Progress | None = None,
                slide_chunks: SlideChunks | None = None) -> EmbedReport:
    """Embed whatever the model has not embedded yet, for every modality the model encodes.

    `slide_chunks` encodes the slides elsewhere (a Ray cluster); each chunk it yields is
    recorded as one part as soon as it arrives, exactly as the local chunks are.
    """
    model = load_atlas_model(atlas, model_id)
    report = EmbedReport(model_id=model_id)
    _embed_slides(atlas, model, model_id, report, progress, slide_chunks or _local_chunks(model))
    for modality in PROFILE_MODALITIES:
        if modality in model.modalities:
            _embed_profiles(atlas, model, model_id, modality, report)
        elif count_items(atlas, modality):
            report.notes.append(f"model {model_id} has no {modality} encoder; {modality} profiles not embedded")
    for modality in MODALITIES:  # keep the part count bounded, so one stored vector is one small read
        if part_count(atlas, model_id, modality) > MAX_PARTS:
            report.compacted[modality] = compact(atlas, model_id, modality)
    return report


def baseline_to_embed(atlas: Atlas, model_id: str) -> str | None:
    """The mean-pooling baseline to embed beside `model_id` (the newest one), None when the atlas
    has none or `model_id` is it."""
    from threads_search.atlas.stored_models import baseline_model_id

    baseline = baseline_model_id(atlas)
    return None if baseline in (None, model_id) else baseline


def resolve_embed_model(atlas: Atlas, model: str | None = None, weights=None) -> tuple[str, list[str]]:
    """The model id `embed --model MODEL [--weights FILE]` means, and notes.

    With `weights`, MODEL names a published encoder (feather, chief, ...): it is loaded from the
    local file in its published layout for the atlas's patch features and stored as a frozen model
    (idempotent: the same file gives the same id). Without, a published name picks the newest
    stored model of that recipe (see resolve_model_id); `meanpool` is registered on first use (no
    training, no profiles); anything else is a model id or prefix.
    """
    from pathlib import Path

    from threads_search.encoders.patch.names import same_patch_encoder
    from threads_search.encoders.published import load_published, published_recipes
    from threads_search.jobs.builtin_models import BUILTIN_SLIDE_MODELS, ensure_builtin_model

    published = published_recipes()
    if weights is None and model in BUILTIN_SLIDE_MODELS:
        return ensure_builtin_model(atlas, model)
    if weights is None:
        if model in published and not models_named(atlas, model):
            load_published(model, None)  # raises: weights not released, or --weights needed
        return resolve_model_id(atlas, model), []
    if model not in published:
        from threads_search.errors import InputError

        raise InputError(f"--weights: --model must name a published encoder ({', '.join(published)}), got '{model}'")
    feature_dim = atlas.meta("feature_dim")
    patch_encoder = atlas.meta("patch_encoder") or ""
    loaded = load_published(model, Path(weights), int(feature_dim) if feature_dim else None, patch_encoder)
    notes = []
    expected = getattr(getattr(loaded, "layout", None), "patch_encoders", "")
    # `expected` reads like "conch_v15 (768-d) or uni_v2 (1536-d)": its first word per alternative
    if patch_encoder and expected and not any(same_patch_encoder(patch_encoder, option.split()[0])
                                              for option in expected.split(" or ") if option.split()):
        notes.append(f"{model}'s published weights were trained on {expected} features; the atlas holds "
                     f"'{patch_encoder}' features (embeddings are computed, but may mean little)")
    # a file's sha256, or a snapshot folder's fingerprint (hf_slide)
    fingerprint = getattr(loaded.config, "weights_sha256", None) or getattr(loaded.config, "fingerprint", None)
    provenance = {"published": model, "weights_file": str(Path(weights).resolve()), "weights_sha256": fingerprint,
                  "frozen": True}
    return store_model(atlas, loaded, provenance), notes


def _embed_slides(atlas: Atlas, model, model_id: str, report: EmbedReport, progress: Progress | None,
                  slide_chunks: SlideChunks) -> None:
    items = slide_items(atlas)  # with patch features, or known by precomputed embeddings only
    done = embedded_vids(atlas, model_id, "slides")
    waiting = [item for item in items if item.vid not in done]
    report.skipped["slides"] = len(items) - len(waiting)
    frozen = getattr(model, "frozen_slide_model_id", None)
    if frozen and waiting:
        waiting = _copy_frozen_slides(atlas, frozen, model_id, waiting, report)
    if getattr(model, "precomputed", False) and waiting:  # its vectors come in with `ingest slide-embeddings` only
        report.notes.append(f"slides: {len(waiting)} have no '{model.name}' embedding and cannot be computed here; "
                            f"add them with `threads-search ingest slide-embeddings --encoder {model.name}`")
        waiting = []
    waiting_vids = {item.vid for item in waiting}
    todo = [record for record in slide_records(atlas) if record.vid in waiting_vids] if waiting else []
    if len(todo) < len(waiting):
        report.notes.append(f"slides: {len(waiting) - len(todo)} known by precomputed embeddings only have no patch "
                            f"features to encode; not embedded by model {model_id}")
    embedded = 0
    if todo:
        model.check_features(int(atlas.meta("feature_dim")), atlas.meta("patch_encoder"))
        for vids, vectors in slide_chunks(todo, progress):
            write_part(atlas, model_id, "slides", vids, vectors)
            embedded += len(vids)
    report.embedded["slides"] = report.embedded.get("slides", 0) + embedded


def _local_chunks(model) -> SlideChunks:
    def chunks(todo: list[AtlasSlide], progress: Progress | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(todo), SLIDES_PER_PART):
            chunk = todo[start:start + SLIDES_PER_PART]
            vectors = []
            for offset, record in enumerate(chunk):
                vectors.append(encode_atlas_slide(model, record))
                if progress:
                    progress(start + offset + 1, len(todo), record.slide_id)
            yield np.array([r.vid for r in chunk], np.int64), np.stack(vectors)
    return chunks


def _copy_frozen_slides(atlas: Atlas, frozen_id: str, model_id: str, todo: list, report: EmbedReport) -> list:
    """Copy the frozen slide model's stored vectors verbatim (an aligned model's slide side) for
    `todo` (slide items); returns those it has not embedded, then encoded by the (same) frozen model."""
    vids, vectors = load_embeddings(atlas, frozen_id, "slides", np.array([r.vid for r in todo], np.int64))
    for start in range(0, len(vids), SLIDES_PER_PART * 16):
        write_part(atlas, model_id, "slides", vids[start:start + SLIDES_PER_PART * 16],
                   vectors[start:start + SLIDES_PER_PART * 16])
    report.embedded["slides"] = len(vids)
    copied = set(vids.tolist())
    rest = [r for r in todo if r.vid not in copied]
    if copied:
        report.notes.append(f"slides: {len(copied)} vectors copied from the frozen slide model {frozen_id}")
    return rest


def _embed_profiles(atlas: Atlas, model, model_id: str, modality: str, report: EmbedReport) -> None:
    vid_of = vid_by_item(atlas, modality)
    done = embedded_vids(atlas, model_id, modality)
    todo = [sample for sample, vid in vid_of.items() if vid not in done]
    report.skipped[modality] = len(vid_of) - len(todo)
    report.embedded[modality] = 0
    if not todo:
        return
    encode = model.encode_expression if modality == "expression" else model.encode_mutations
    for matrix in load_profiles(atlas, modality, todo):
        vectors, alignment = encode(matrix.values, matrix.genes)
        if alignment.n_missing:
            report.notes.append(f"{modality}: {alignment.n_missing} of the model's genes "
                                f"({alignment.missing_fraction:.0%}) are missing from {matrix.path.name}; filled with training means")
        write_part(atlas, model_id, modality, np.array([vid_of[s] for s in matrix.sample_ids], np.int64), vectors)
        report.embedded[modality] += len(matrix.sample_ids)
