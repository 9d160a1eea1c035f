"""Slides of the atlas: the `slides` table (one referenced or copied feature file each) and
their patch-feature bags, read back with a check that the file is still the one ingested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from threads_search.atlas.store import Atlas, utc_now
from threads_search.errors import InputError
from threads_search.readers.patch_features import FeatureFileInfo, fingerprint_file, read_bag, read_coords


@dataclass(frozen=True)
class AtlasSlide:
    """One ingested slide: its item (vid, patient) and the feature file it was read from."""

    slide_id: str
    vid: int
    patient_id: str
    path: Path
    file_size: int
    file_mtime_ns: int
    fingerprint: str
    n_patches: int
    patch_encoder: str | None = None
    patch_size_level0: int | None = None
    magnification: float | None = None
    attrs: dict = field(default_factory=dict, compare=False, hash=False)


_SELECT = """SELECT s.slide_id, i.vid, i.patient_id, s.path, s.copied, s.file_size, s.file_mtime_ns, s.fingerprint,
                    s.n_patches, s.patch_encoder, s.patch_size_level0, s.magnification, s.attrs
             FROM slides s JOIN items i ON i.modality = 'slides' AND i.item_id = s.slide_id"""


def _record(atlas: Atlas, row: tuple) -> AtlasSlide:
    return AtlasSlide(slide_id=row[0], vid=int(row[1]), patient_id=row[2], path=atlas.path(row[3]) if row[4] else Path(row[3]),
                      file_size=row[5], file_mtime_ns=row[6], fingerprint=row[7], n_patches=row[8], patch_encoder=row[9],
                      patch_size_level0=row[10], magnification=row[11], attrs=json.loads(row[12] or "{}"))


def slide_records(atlas: Atlas, vids: np.ndarray | None = None) -> list[AtlasSlide]:
    """Atlas slides (only those with `vids`, if given — e.g. a filter's result), in vector-id order."""
    import pyarrow as pa

    if vids is None:
        rows = atlas.sql(_SELECT + " ORDER BY i.vid").fetchall()
    else:
        with atlas.registered("selected_vids", pa.table({"vid": pa.array(np.asarray(vids, np.int64))})):
            rows = atlas.sql(_SELECT + " WHERE i.vid IN (SELECT vid FROM selected_vids) ORDER BY i.vid").fetchall()
    return [_record(atlas, row) for row in rows]


@dataclass(frozen=True)
class SlideItem:
    """A slide as an item: with patch features or known by precomputed slide embeddings only."""

    slide_id: str
    vid: int
    patient_id: str


def slide_items(atlas: Atlas, vids: np.ndarray | None = None) -> list[SlideItem]:
    """Every slide item (only those with `vids`, if given), in vector-id order, whether or not it
    has a feature file: the slides whose stored embeddings a frozen slide model is read for."""
    import pyarrow as pa

    query = "SELECT item_id, vid, patient_id FROM items WHERE modality = 'slides'"
    if vids is None:
        rows = atlas.sql(query + " ORDER BY vid").fetchall()
    else:
        with atlas.registered("selected_vids", pa.table({"vid": pa.array(np.asarray(vids, np.int64))})):
            rows = atlas.sql(query + " AND vid IN (SELECT vid FROM selected_vids) ORDER BY vid").fetchall()
    return [SlideItem(slide_id, int(vid), patient_id) for slide_id, vid, patient_id in rows]


def slide_record(atlas: Atlas, slide_id: str) -> AtlasSlide:
    """One slide by id; an unknown id is a one-line InputError."""
    row = atlas.sql(_SELECT + " WHERE s.slide_id = ?", [slide_id]).fetchone()
    if row is None:
        if atlas.sql("SELECT 1 FROM items WHERE modality = 'slides' AND item_id = ?", [slide_id]).fetchone():
            raise InputError(f"slide '{slide_id}' has no patch features in {atlas.root} (only precomputed slide "
                             f"embeddings); use a model that holds its embedding, or ingest its features")
        raise InputError(f"unknown slide id '{slide_id}' (not in {atlas.root})")
    return _record(atlas, row)


def slide_fingerprints(atlas: Atlas) -> dict[str, str]:
    """slide_id -> fingerprint of the file it was ingested from."""
    return dict(atlas.sql("SELECT slide_id, fingerprint FROM slides").fetchall())


def extraction_settings(atlas: Atlas) -> list[tuple[float | None, dict]]:
    """(magnification, file attributes) of every slide: how their features were extracted."""
    return [(m, json.loads(a or "{}")) for m, a in atlas.sql("SELECT magnification, attrs FROM slides").fetchall()]


def slide_summary(atlas: Atlas) -> dict:
    """Counts and feature facts over every slide, for `info`."""
    row = atlas.sql("""SELECT count(*), sum(n_patches), min(n_patches), max(n_patches),
                              list(DISTINCT dtype), count(*) FILTER (WHERE copied) FROM slides""").fetchone()
    return {"slides": row[0], "patches_total": int(row[1] or 0), "patches_per_slide": [row[2], row[3]] if row[0] else None,
            "dtypes": row[4] or [], "copied_into_atlas": row[5]}


def write_slides(atlas: Atlas, infos: list[FeatureFileInfo], stored_paths: list[str], copied: bool) -> None:
    """Insert or replace the slide rows of validated feature files (inside the caller's transaction)."""
    import pyarrow as pa

    if not infos:
        return
    now = utc_now()
    incoming = pa.table({
        "slide_id": [i.slide_id for i in infos], "path": stored_paths, "copied": [copied] * len(infos),
        "file_size": pa.array([i.file_size for i in infos], pa.int64()),
        "file_mtime_ns": pa.array([i.file_mtime_ns for i in infos], pa.int64()),
        "fingerprint": [i.fingerprint for i in infos], "file_format": [i.file_format for i in infos],
        "n_patches": pa.array([i.n_patches for i in infos], pa.int32()),
        "feature_dim": pa.array([i.feature_dim for i in infos], pa.int32()),
        "dtype": [i.dtype for i in infos], "patch_encoder": pa.array([i.patch_encoder for i in infos], pa.string()),
        "patch_size_level0": pa.array([i.patch_size_level0 for i in infos], pa.int32()),
        "magnification": pa.array([i.magnification for i in infos], pa.float64()),
        "attrs": [json.dumps(i.attrs, sort_keys=True) for i in infos], "ingested_at": [now] * len(infos),
    })
    with atlas.registered("incoming_slides", incoming):
        atlas.sql("DELETE FROM slides WHERE slide_id IN (SELECT slide_id FROM incoming_slides)")
        atlas.sql("INSERT INTO slides BY NAME SELECT * FROM incoming_slides")


def verify_unchanged(record: AtlasSlide) -> Path:
    """The slide's feature file, refused if it vanished or changed since ingest."""
    path = record.path
    if not path.is_file():
        raise InputError(f"{path}: feature file of slide '{record.slide_id}' has vanished since ingest; "
                         f"restore it or re-ingest with --replace")
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) != (record.file_size, record.file_mtime_ns) and fingerprint_file(path) != record.fingerprint:
        raise InputError(f"{path}: feature file of slide '{record.slide_id}' changed since ingest; "
                         f"re-ingest it with --replace")
    return path


def load_slide_bag(record: AtlasSlide) -> np.ndarray:
    """`(n_patches, dim) float32` features of one atlas slide."""
    return read_bag(verify_unchanged(record))


def encode_atlas_slide(model, record: AtlasSlide) -> np.ndarray:
    """`model.encode_slide` of one atlas slide; a model that `needs_coordinates` (TITAN) also gets
    the patches' level-0 coords and the patch size at level 0."""
    from threads_search.encoders.model import encode_slide_at

    if not getattr(model, "needs_coordinates", False):
        return model.encode_slide(load_slide_bag(record))
    path = verify_unchanged(record)
    return encode_slide_at(model, read_bag(path), read_coords(path), record.patch_size_level0)
