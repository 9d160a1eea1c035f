"""`ingest slide-embeddings`: precomputed (D,) slide vectors -> a frozen `precomputed` model.

Each `--encoder NAME` (at one dimension) is one model; its vectors are stored L2-normalised as
that model's slide embeddings, which index / search / eval / prototypes / serve read like a
trained model's. Ids that name ingested slides attach to them (their vector ids are kept, so
other models' embeddings stay valid); ids the atlas does not know become slides of their own,
with no patch features, paired and described by `--metadata` (slide_id, patient_id, ...).

Every file is read and checked first; then the new slides, their metadata, the model record
and the embedding part are written in ONE transaction: a bad file or an interruption leaves the
atlas as it was, and a re-run of the same files changes nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from threads_search.atlas import layout
from threads_search.atlas.embeddings import COMPACT_PART_ROWS, add_part, embedded_vids, load_embeddings
from threads_search.atlas.items import insert_new_items, vid_by_item
from threads_search.atlas.metadata import apply_metadata
from threads_search.atlas.store import Atlas
from threads_search.atlas.stored_models import record_model_files
from threads_search.encoders.checkpoint import model_id as content_id
from threads_search.encoders.checkpoint import save_model
from threads_search.encoders.model import l2_normalise
from threads_search.encoders.patch.names import canonical_patch_encoder
from threads_search.encoders.registry import create_model
from threads_search.errors import InputError
from threads_search.ingest.coverage import coverage_warnings
from threads_search.ingest.plan import IngestReport
from threads_search.readers.metadata_csv import read_metadata_csv
from threads_search.readers.paths import folder_encoder
from threads_search.readers.slide_embeddings import EMBEDDING_FILES, expand_embedding_paths, read_slide_embeddings

# Vectors equal to this tolerance count as the same embedding again (a re-run).
SAME_VECTOR_ATOL = 1e-6


def _encoder_name(encoder: str | None, paths: list[Path]) -> str:
    """`--encoder`, or the `<encoder>` of the TRIDENT folder `slide_features_<encoder>` all files are in."""
    if encoder is None:
        names = {folder_encoder(path, EMBEDDING_FILES) for path in paths}
        if len(names) == 1 and None not in names:
            return names.pop()
        raise InputError(f"{paths[0].parent}: not a TRIDENT {EMBEDDING_FILES.trident_prefix}<encoder> folder; name the "
                         f"slide encoder with --encoder NAME (titan, feather, chief, prism ...)")
    name = encoder.strip()
    if not name or any(c.isspace() for c in name):
        raise InputError(f"--encoder {encoder!r}: give the slide encoder's name, e.g. titan, feather, chief, prism")
    return name


def precomputed_model(encoder: str, dim: int, patch_encoder: str | None):
    """The frozen model of a set: its id depends on (name, dimension, patch encoder) only."""
    return create_model("precomputed", encoder=encoder, out_dim=int(dim), patch_encoder=patch_encoder or "")


def ingest_slide_embeddings(atlas: Atlas, paths: list[str | os.PathLike], encoder: str | None = None,
                            metadata_csv: str | os.PathLike | None = None, ids_file: str | os.PathLike | None = None,
                            patch_encoder: str | None = None, strict: bool = False) -> tuple[IngestReport, str, str]:
    """Validate the files, then record them as the `encoder` model's slide embeddings (None: read
    from a TRIDENT `slide_features_<encoder>` folder, or the only one of a TRIDENT job folder;
    `encoder` chooses among several); returns (report, model id, encoder name).
    `patch_encoder` records what the embeddings were computed from (optional)."""
    files = expand_embedding_paths(list(paths), encoder, canonical_patch_encoder)
    encoder = _encoder_name(encoder, files)
    embeddings = read_slide_embeddings(files, Path(ids_file) if ids_file else None)
    report = IngestReport()
    metadata = read_metadata_csv(metadata_csv, "slide_id") if metadata_csv else None
    patient_of: dict[str, str] = {}
    if metadata is not None and metadata.key_column == "slide_id":
        patient_of = {k: str(p) for k, p in zip(metadata.keys, metadata.column("patient_id")) if p is not None}
        report.warnings += coverage_warnings(metadata, embeddings.slide_ids, embeddings.origins[0][0].parent,
                                             "slide embedding", strict,
                                             {i: o[0] for i, o in zip(embeddings.slide_ids, embeddings.origins)})
    model = precomputed_model(encoder, embeddings.dim, canonical_patch_encoder(patch_encoder))
    model_id = content_id(model)
    vectors = l2_normalise(embeddings.matrix())
    vid_of = vid_by_item(atlas, "slides")
    known = [k for k, s in enumerate(embeddings.slide_ids) if s in vid_of]
    done = embedded_vids(atlas, model_id, "slides") if known else set()
    again = [k for k in known if vid_of[embeddings.slide_ids[k]] in done]
    _refuse_changed(atlas, model_id, embeddings, vectors, again, vid_of, encoder)
    report.unchanged = len(again)
    fresh = [k for k in range(len(embeddings.slide_ids)) if k not in set(again)]
    new_ids = [embeddings.slide_ids[k] for k in fresh if embeddings.slide_ids[k] not in vid_of]
    report.added = len(fresh)
    if not fresh and metadata is None:
        return report, model_id, encoder  # a re-run: nothing to write
    _write(atlas, model, model_id, encoder, embeddings, vectors, fresh, new_ids, patient_of, metadata, report)
    if new_ids:
        report.warnings.append(f"{len(new_ids)} slide id(s) were not in the atlas (first: '{new_ids[0]}'); added as "
                               f"slides with '{encoder}' embeddings only (no patch features)")
    return report, model_id, encoder


def _refuse_changed(atlas: Atlas, model_id: str, embeddings, vectors: np.ndarray, again: list[int],
                    vid_of: dict[str, int], encoder: str) -> None:
    if not again:
        return
    vids = np.array([vid_of[embeddings.slide_ids[k]] for k in again], np.int64)
    stored_vids, stored = load_embeddings(atlas, model_id, "slides", vids)
    row_of = {int(v): i for i, v in enumerate(stored_vids)}
    for k, vid in zip(again, vids):
        if not np.allclose(stored[row_of[int(vid)]], vectors[k], atol=SAME_VECTOR_ATOL):
            raise InputError(f"{embeddings.where(k)}: slide '{embeddings.slide_ids[k]}' already has another '{encoder}' "
                             f"embedding in the atlas; remove it first (`threads-search remove`) to replace it")


def _write(atlas: Atlas, model, model_id: str, encoder: str, embeddings, vectors: np.ndarray, fresh: list[int],
           new_ids: list[str], patient_of: dict[str, str], metadata, report: IngestReport) -> None:
    folder = atlas.path(layout.model_folder(model_id))
    created_folder = not folder.exists()
    save_model(model, folder)
    parts: list[str] = []
    try:
        with atlas.transaction():
            if new_ids:
                insert_new_items(atlas, "slides", new_ids, [patient_of.get(i) for i in new_ids])
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, "slides")
            record_model_files(atlas, model_id, model.recipe, {"precomputed": True, "encoder": encoder,
                                                                "dim": embeddings.dim, "normalised": "L2"}, embeddings.files)
            vid_of = vid_by_item(atlas, "slides")
            for start in range(0, len(fresh), COMPACT_PART_ROWS):  # parts of the size `compact` writes
                chunk = fresh[start:start + COMPACT_PART_ROWS]
                vids = np.array([vid_of[embeddings.slide_ids[k]] for k in chunk], np.int64)
                parts.append(add_part(atlas, model_id, "slides", vids, vectors[chunk]))
    except BaseException:
        for part in parts:
            atlas.path(part).unlink(missing_ok=True)
        if created_folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
