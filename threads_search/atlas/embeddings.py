"""Embeddings as Parquet parts under `embeddings/<model_id>/`, recorded in the `embeddings` table.

A part is written under a temporary name, renamed, then recorded in one transaction, so an
interrupted embed job keeps every finished part and resumes after the last one.
"""

from __future__ import annotations

import numpy as np

from threads_search.atlas import layout
from threads_search.atlas.parquet import read_atlas_parquet
from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import atomic_path, file_checksum


def write_part(atlas: Atlas, model_id: str, modality: str, vids: np.ndarray, vectors: np.ndarray) -> str:
    """Store `(n, dim) float32` vectors of items `vids` (int64) as one new part; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    relative = layout.new_embedding_part(model_id, modality)
    destination = atlas.path(relative)
    table = pa.table({"vid": pa.array(np.asarray(vids, dtype=np.int64)),
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])})
    with atomic_path(destination) as temporary:
        pq.write_table(table, temporary)
    try:
        with atlas.transaction():
            atlas.sql("INSERT INTO embeddings (model_id, modality, part, n_vectors, created_at, checksum) "
                      "VALUES (?, ?, ?, ?, ?, ?)", [model_id, modality, relative, len(vids), utc_now(), file_checksum(destination)])
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    return relative


def _parts(atlas: Atlas, model_id: str, modality: str) -> list[str]:
    rows = atlas.sql("SELECT part FROM embeddings WHERE model_id = ? AND modality = ? ORDER BY created_at, part",
                     [model_id, modality]).fetchall()
    return [r[0] for r in rows]


def load_embeddings(atlas: Atlas, model_id: str, modality: str, vids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(ids (n,) int64, vectors (n, dim) float32)` of items that still exist, in vid order.

    Vectors of replaced items (whose vid changed) are left out; `vids` restricts the result.
    """
    current = atlas.modality_vids(modality)
    wanted = current if vids is None else np.intersect1d(current, np.asarray(vids, np.int64))
    all_ids, all_vectors = [], []
    for part in _parts(atlas, model_id, modality):
        # The id column first: a query for a few items then reads vectors of the parts holding them only.
        ids = read_atlas_parquet(atlas, part, "embedding part", ["vid"]).column("vid").to_numpy()
        keep = np.isin(ids, wanted)
        if not keep.any():
            continue
        column = read_atlas_parquet(atlas, part, "embedding part", ["vector"]).column("vector").combine_chunks()
        vectors = column.flatten().to_numpy().reshape(len(ids), column.type.list_size)
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


def embedded_models(atlas: Atlas) -> list[str]:
    """Ids of the models that have embedded anything."""
    return [r[0] for r in atlas.sql("SELECT DISTINCT model_id FROM embeddings ORDER BY 1").fetchall()]


def embedding_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT model_id, modality, sum(n_vectors) FROM embeddings GROUP BY ALL ORDER BY ALL").fetchall()
    return [{"model_id": i, "modality": m, "vectors": int(n)} for i, m, n in rows]


def embedded_vids(atlas: Atlas, model_id: str, modality: str) -> set[int]:

    done: set[int] = set()
    for part in _parts(atlas, model_id, modality):
        done.update(read_atlas_parquet(atlas, part, "embedding part", ["vid"]).column("vid").to_pylist())
    return done
