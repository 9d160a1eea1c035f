"""Patch-feature bags of atlas slides, read back with a check that the file is still the one ingested."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from threads_search.atlas.store import Atlas
from threads_search.errors import InputError
from threads_search.readers.patch_features import fingerprint_file, read_bag


@dataclass(frozen=True)
class SlideRecord:
    slide_id: str
    vid: int
    patient_id: str
    path: Path
    file_size: int
    file_mtime_ns: int
    fingerprint: str
    n_patches: int


def slide_records(atlas: Atlas, where_sql: str | None = None) -> list[SlideRecord]:
    """Atlas slides (optionally filtered by a checked `--where` clause), in vector-id order."""
    # The filter runs on `items` alone, so metadata columns never clash with `slides` columns.
    condition = f"AND i.vid IN (SELECT vid FROM items WHERE modality = 'slides' AND ({where_sql}))" if where_sql else ""
    rows = atlas.sql(f"""SELECT s.slide_id, i.vid, i.patient_id, s.path, s.copied, s.file_size, s.file_mtime_ns,
                                s.fingerprint, s.n_patches
                         FROM slides s JOIN items i ON i.modality = 'slides' AND i.item_id = s.slide_id
                         WHERE TRUE {condition} ORDER BY i.vid""").fetchall()
    return [SlideRecord(slide_id=r[0], vid=r[1], patient_id=r[2], path=atlas.path(r[3]) if r[4] else Path(r[3]),
                        file_size=r[5], file_mtime_ns=r[6], fingerprint=r[7], n_patches=r[8]) for r in rows]


def verify_unchanged(record: SlideRecord) -> Path:
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


def load_slide_bag(record: SlideRecord) -> np.ndarray:
    """`(n_patches, dim) float32` features of one atlas slide."""
    return read_bag(verify_unchanged(record))
