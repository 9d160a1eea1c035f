"""The atlas's patch index: where its files live, its record, its slide table, and the slide
look-ups region queries need. The only SQL of the patch level lives here.

Files (one patch index per atlas, in the patch encoder's space; new names at every build, so a
reader of an older generation keeps its files until the writer's garbage collection)::

    indexes/patches-<build>.faiss | .ids.npy | .json   the index (indexer.patch_index)
    indexes/patches-<build>.slides.parquet             one row per indexed slide: vid, slide id,
                                                       feature file and its row layout

Table `patch_indexes` (schema version 3): one row per patch index with its files' stem, kind,
counts, mosaic fraction and measured recall.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import atomic_path
from threads_search.errors import AtlasError, InputError
from threads_search.readers.feature_rows import FeatureLayout

PATCH_INDEX_NAME = "patches"
SLIDE_TABLE_SUFFIX = ".slides.parquet"


def record_patch_index(atlas: Atlas, stem: str, sidecar: dict, n_slides: int, mosaic_fraction: float | None) -> None:
    """Register a freshly saved patch index whose files sit at `stem` (one transaction)."""
    with atlas.transaction():
        atlas.sql("INSERT OR REPLACE INTO patch_indexes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [PATCH_INDEX_NAME, stem, sidecar.get("patch_encoder"), int(sidecar["dimension"]),
                   sidecar["kind"], int(sidecar["count"]), int(n_slides), mosaic_fraction,
                   sidecar.get("recall_at_10"), utc_now()])


def patch_index_record(atlas: Atlas) -> dict | None:
    """The registered patch index as a dict (its files at `path`), or None if the atlas has none."""
    rows = atlas.sql("SELECT * FROM patch_indexes WHERE name = ?", [PATCH_INDEX_NAME])
    row = rows.fetchone()
    return dict(zip(rows.columns, row)) if row else None


def require_patch_index(atlas: Atlas) -> dict:
    record = patch_index_record(atlas)
    if record is None:
        raise AtlasError(f"{atlas.root} has no patch index; build one with "
                         f"`threads-search index {atlas.root} --level patches`")
    return record


def write_slide_table(atlas: Atlas, stem: str, slides: list[dict]) -> Path:
    """Write the per-slide table of the patch index atomically; `slides` rows hold vid,
    slide_id, patch_size_level0, n_indexed and a FeatureLayout under 'layout'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = atlas.path(stem + SLIDE_TABLE_SUFFIX)
    columns: dict[str, list] = {"vid": [], "slide_id": [], "patch_size_level0": [], "n_indexed": []}
    layout_columns = [name for name in FeatureLayout.__dataclass_fields__]
    for name in layout_columns:
        columns[name] = []
    for slide in slides:
        for key in ("vid", "slide_id", "patch_size_level0", "n_indexed"):
            columns[key].append(slide[key])
        layout = asdict(slide["layout"])
        for name in layout_columns:
            value = layout[name]
            columns[name].append(str(value) if name == "path" else (list(value) if name == "chunk_offsets" else value))
    table = pa.table({**{k: v for k, v in columns.items() if k != "chunk_offsets"},
                      "chunk_offsets": pa.array(columns["chunk_offsets"], pa.list_(pa.int64()))})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return path


def read_slide_table(atlas: Atlas, stem: str) -> dict[int, dict]:
    """vid -> {slide_id, patch_size_level0, n_indexed, layout} of the slides a patch index holds."""
    import pyarrow.parquet as pq

    path = atlas.path(stem + SLIDE_TABLE_SUFFIX)
    if not path.is_file():
        raise AtlasError(f"{path} is missing; rebuild with `threads-search index {atlas.root} --level patches`")
    table = pq.read_table(path).to_pylist()
    out = {}
    for row in table:
        layout = FeatureLayout(path=Path(row["path"]), kind=row["kind"], n_rows=row["n_rows"], dim=row["dim"],
                               dtype=row["dtype"], file_size=row["file_size"], file_mtime_ns=row["file_mtime_ns"],
                               fingerprint=row["fingerprint"], offset=row["offset"], chunk_rows=row["chunk_rows"],
                               chunk_offsets=tuple(row["chunk_offsets"] or ()))
        out[int(row["vid"])] = {"slide_id": row["slide_id"], "patch_size_level0": row["patch_size_level0"],
                                "n_indexed": row["n_indexed"], "layout": layout}
    return out


def slide_identity(atlas: Atlas, slide_id: str) -> tuple[int, str]:
    """(vid, patient_id) of an atlas slide; InputError if unknown."""
    row = atlas.sql("SELECT vid, patient_id FROM items WHERE modality = 'slides' AND item_id = ?", [slide_id]).fetchone()
    if row is None:
        raise InputError(f"unknown slide id '{slide_id}' (not in {atlas.root})")
    return int(row[0]), row[1]


def patient_slide_vids(atlas: Atlas, patient_ids: list[str]) -> np.ndarray:
    """Sorted vids of every slide of the given patients."""
    if not patient_ids:
        return np.empty(0, np.int64)
    placeholders = ", ".join("?" for _ in patient_ids)
    rows = atlas.sql(f"SELECT vid FROM items WHERE modality = 'slides' AND patient_id IN ({placeholders}) ORDER BY vid",
                     list(patient_ids)).fetchall()
    return np.array([r[0] for r in rows], np.int64)


def current_slide_vids(atlas: Atlas) -> np.ndarray:
    """Sorted vids of the slides the atlas holds now (a replaced slide's old vid is not among them)."""
    rows = atlas.sql("SELECT vid FROM items WHERE modality = 'slides' ORDER BY vid").fetchall()
    return np.array([r[0] for r in rows], np.int64)


def slide_patients(atlas: Atlas, vids: list[int]) -> dict[int, str]:
    """vid -> patient_id for the given slide vids (unknown vids are left out)."""
    if not vids:
        return {}
    placeholders = ", ".join("?" for _ in vids)
    rows = atlas.sql(f"SELECT vid, patient_id FROM items WHERE modality = 'slides' AND vid IN ({placeholders})",
                     [int(v) for v in vids]).fetchall()
    return {int(v): p for v, p in rows}


def slide_patch_sizes(atlas: Atlas) -> dict[int, int | None]:
    """vid -> patch side in level-0 pixels as ingest recorded it (None when the file gave none)."""
    rows = atlas.sql("""SELECT i.vid, s.patch_size_level0 FROM slides s
                        JOIN items i ON i.modality = 'slides' AND i.item_id = s.slide_id""").fetchall()
    return {int(v): (int(p) if p is not None else None) for v, p in rows}
