"""Embeddings as Parquet parts under `embeddings/<model_id>/`, recorded in the `embeddings` table.

A part holds `vid` (int64, ascending) and `vector` (fixed-size float32 lists) in row groups of
`ROW_GROUP_ROWS`; its record keeps its vid range, so one stored vector is found by reading one
row group of one part (`stored_vector`), never by scanning parts. A part is written under a
temporary name, renamed, then recorded in one transaction, so an interrupted embed job keeps
every finished part and resumes after the last one. `compact` merges many small parts into few
large ones (dropping vectors of removed or replaced items) in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threads_search.atlas import layout
from threads_search.atlas.arrow import float32_matrix, int64_column
from threads_search.atlas.parquet import read_atlas_parquet
from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import atomic_path, file_checksum

ROW_GROUP_ROWS = 1024
# compact() writes parts of at most this many vectors (256 MiB at 1024-d) ...
COMPACT_PART_ROWS = 65_536
# ... and embed() calls it once a (model, modality) has more parts than this.
MAX_PARTS = 16


def _write_file(atlas: Atlas, relative: str, vids: np.ndarray, vectors: np.ndarray) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = np.argsort(vids, kind="stable")
    vids, vectors = np.asarray(vids, np.int64)[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
    table = pa.table({"vid": pa.array(vids),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
    with atomic_path(atlas.path(relative)) as temporary:
        pq.write_table(table, temporary, row_group_size=ROW_GROUP_ROWS, compression="none")
    return file_checksum(atlas.path(relative))


def _record(atlas: Atlas, model_id: str, modality: str, relative: str, vids: np.ndarray, checksum: str) -> None:
    atlas.sql("INSERT INTO embeddings (model_id, modality, part, n_vectors, created_at, checksum, min_vid, max_vid) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              [model_id, modality, relative, len(vids), utc_now(), checksum, int(vids.min()), int(vids.max())])


def write_part(atlas: Atlas, model_id: str, modality: str, vids: np.ndarray, vectors: np.ndarray) -> str:
    """Store `(n, dim) float32` vectors of items `vids` (int64) as one new part; returns its path."""
    vids = np.asarray(vids, dtype=np.int64)
    relative = layout.new_embedding_part(model_id, modality)
    checksum = _write_file(atlas, relative, vids, vectors)
    try:
        with atlas.transaction():
            _record(atlas, model_id, modality, relative, vids, checksum)
    except BaseException:
        atlas.path(relative).unlink(missing_ok=True)
        raise
    return relative


def add_part(atlas: Atlas, model_id: str, modality: str, vids: np.ndarray, vectors: np.ndarray) -> str:
    """`write_part` inside the CALLER's transaction (with the items it creates): the file is
    written now and recorded by the caller's commit; if that rolls back the caller unlinks it
    (or the writer's garbage collection does, as a file no record references)."""
    vids = np.asarray(vids, dtype=np.int64)
    relative = layout.new_embedding_part(model_id, modality)
    _record(atlas, model_id, modality, relative, vids, _write_file(atlas, relative, vids, vectors))
    return relative


@dataclass(frozen=True)
class _Parts:
    names: list[str]
    low: np.ndarray  # (n_parts,) int64 smallest vid of each part
    high: np.ndarray


def _parts(atlas: Atlas, model_id: str, modality: str) -> _Parts:
    def read() -> _Parts:
        rows = atlas.sql("SELECT part, min_vid, max_vid FROM embeddings WHERE model_id = ? AND modality = ? "
                         "ORDER BY created_at, part", [model_id, modality]).fetchall()
        low = np.array([r[1] if r[1] is not None else np.iinfo(np.int64).min for r in rows], np.int64)
        high = np.array([r[2] if r[2] is not None else np.iinfo(np.int64).max for r in rows], np.int64)
        return _Parts([r[0] for r in rows], low, high)

    return atlas.cached(("embedding parts", model_id, modality), read)


def part_count(atlas: Atlas, model_id: str, modality: str) -> int:
    return len(_parts(atlas, model_id, modality).names)


def load_embeddings(atlas: Atlas, model_id: str, modality: str, vids=None) -> tuple[np.ndarray, np.ndarray]:
    """`(ids (n,) int64, vectors (n, dim) float32)` of items that still exist, in vid order.

    Vectors of replaced or removed items (whose vid is gone) are left out; `vids` restricts the
    result, and only parts whose vid range meets the wanted ids are read.
    """
    current = atlas.modality_vids(modality)
    wanted = current if vids is None else np.intersect1d(current, np.asarray(vids, np.int64))
    parts = _parts(atlas, model_id, modality)
    all_ids, all_vectors = [], []
    if wanted.size:
        for name, low, high in zip(parts.names, parts.low, parts.high):
            first = np.searchsorted(wanted, low)
            if first >= wanted.size or wanted[first] > high:
                continue  # no wanted id in this part's range
            ids = int64_column(read_atlas_parquet(atlas, name, "embedding part", ["vid"]), "vid")
            keep = np.isin(ids, wanted)
            if not keep.any():
                continue
            vectors = float32_matrix(read_atlas_parquet(atlas, name, "embedding part", ["vector"]).column("vector"))
            all_ids.append(ids[keep])
            all_vectors.append(vectors[keep])
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids = np.concatenate(all_ids)
    vectors = np.concatenate(all_vectors).astype(np.float32)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    unique = np.ones(len(ids), bool)
    unique[1:] = ids[1:] != ids[:-1]  # a part re-written after an interruption may repeat ids
    return ids[unique], vectors[unique]


@dataclass(frozen=True)
class EmbeddingSlice:
    """Some stored vectors, readable without the atlas (by a process on another node that sees
    its folder): the part files (absolute paths) whose vid range meets `vids` (sorted int64)."""

    parts: tuple[str, ...]
    vids: np.ndarray


def embedding_slice(atlas: Atlas, model_id: str, modality: str, vids: np.ndarray) -> EmbeddingSlice:
    wanted = np.intersect1d(atlas.modality_vids(modality), np.asarray(vids, np.int64))
    parts = _parts(atlas, model_id, modality)
    names = []
    for name, low, high in zip(parts.names, parts.low, parts.high):
        first = np.searchsorted(wanted, low)
        if first < wanted.size and wanted[first] <= high:
            names.append(str(atlas.path(name)))
    return EmbeddingSlice(tuple(names), wanted)


def read_embedding_slice(piece: EmbeddingSlice) -> tuple[np.ndarray, np.ndarray]:
    """`(ids (n,) int64, vectors (n, dim) float32)` of the slice's vids, in vid order (as `load_embeddings`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from threads_search.errors import AtlasDamagedError

    all_ids, all_vectors = [], []
    for path in piece.parts:
        try:
            table = pq.read_table(path, columns=["vid", "vector"])
        except (pa.ArrowException, OSError) as error:
            raise AtlasDamagedError(f"{path}: unreadable embedding part ({str(error).splitlines()[0]}); "
                                    f"run `threads-search check ATLAS --repair`, then embed again") from None
        ids = int64_column(table, "vid")
        keep = np.isin(ids, piece.vids)
        if keep.any():
            all_ids.append(ids[keep])
            all_vectors.append(float32_matrix(table.column("vector"))[keep])
    if not all_ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    ids, vectors = np.concatenate(all_ids), np.concatenate(all_vectors)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order]
    unique = np.ones(len(ids), bool)
    unique[1:] = ids[1:] != ids[:-1]
    return ids[unique], vectors[unique]


def stored_vector(atlas: Atlas, model_id: str, modality: str, vid: int) -> np.ndarray | None:
    """One item's stored `(dim,) float32` vector, reading one row group of one part; None if not embedded."""
    import pyarrow.parquet as pq

    parts = _parts(atlas, model_id, modality)
    for position in np.flatnonzero((parts.low <= vid) & (vid <= parts.high))[::-1]:  # newest part first
        name = parts.names[position]
        handle = atlas.cached_file(("parquet", name), lambda name=name: pq.ParquetFile(atlas.path(name), memory_map=True))
        metadata = handle.metadata
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(0).statistics
            if statistics is not None and statistics.has_min_max and not (statistics.min <= vid <= statistics.max):
                continue
            table = handle.read_row_group(group, columns=["vid", "vector"])
            ids = int64_column(table, "vid")
            row = int(np.searchsorted(ids, vid))
            if row < ids.size and ids[row] == vid:
                return float32_matrix(table.column("vector").slice(row, 1))[0]
    return None


def compact(atlas: Atlas, model_id: str, modality: str) -> int:
    """Merge the parts of (model, modality) into parts of up to COMPACT_PART_ROWS vectors of current items.

    Streams one output part at a time (memory: one part), records the new parts and drops the
    old records in one transaction; the old files go with the writer's garbage collection.
    Returns the number of parts afterwards.
    """
    before = _parts(atlas, model_id, modality)
    if len(before.names) <= 1:
        return len(before.names)
    current = atlas.modality_vids(modality)
    written: list[tuple[str, np.ndarray, str]] = []
    try:
        for start in range(0, current.size, COMPACT_PART_ROWS):
            chunk = current[start:start + COMPACT_PART_ROWS]
            ids, vectors = load_embeddings(atlas, model_id, modality, chunk)
            if ids.size:
                relative = layout.new_embedding_part(model_id, modality)
                written.append((relative, ids, _write_file(atlas, relative, ids, vectors)))
        with atlas.transaction():
            atlas.sql("DELETE FROM embeddings WHERE model_id = ? AND modality = ?", [model_id, modality])
            for relative, ids, checksum in written:
                _record(atlas, model_id, modality, relative, ids, checksum)
    except BaseException:
        for relative, _, _ in written:
            atlas.path(relative).unlink(missing_ok=True)
        raise
    return len(written)


def embedded_models(atlas: Atlas) -> list[str]:
    """Ids of the models that have embedded anything."""
    return [r[0] for r in atlas.sql("SELECT DISTINCT model_id FROM embeddings ORDER BY 1").fetchall()]


def embedding_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT model_id, modality, sum(n_vectors) FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()
    return [{"model_id": i, "modality": m, "vectors": int(n)} for i, m, n in rows]


def embedded_vids(atlas: Atlas, model_id: str, modality: str) -> set[int]:
    done: set[int] = set()
    for part in _parts(atlas, model_id, modality).names:
        done.update(read_atlas_parquet(atlas, part, "embedding part", ["vid"]).column("vid").to_pylist())
    return done
