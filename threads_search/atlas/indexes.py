"""Index records: which FAISS index serves each (model, modality), in the `indexes` table.

The files themselves (`indexes/<model>-<modality>.faiss` + `.json`) are written by the indexer;
a record is written only after its files are in place.
"""

from __future__ import annotations

from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import file_checksum


def record_index(atlas: Atlas, model_id: str, modality: str, stem: str, sidecar: dict) -> None:
    """Record (or re-record) the index of (model, modality) whose files sit at `stem`."""
    with atlas.transaction():
        atlas.sql("INSERT OR REPLACE INTO indexes (model_id, modality, path, kind, n_vectors, recall_at_10, built_at, checksum) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  [model_id, modality, stem, sidecar["kind"], int(sidecar["count"]), sidecar.get("recall_at_10"), utc_now(),
                   file_checksum(atlas.path(stem + ".faiss"))])


def forget_index(atlas: Atlas, model_id: str, modality: str) -> None:
    with atlas.transaction():
        atlas.sql("DELETE FROM indexes WHERE model_id = ? AND modality = ?", [model_id, modality])


def index_location(atlas: Atlas, model_id: str, modality: str) -> str | None:
    """The recorded stem (relative path without extension) of the index, or None."""
    stems = atlas.cached("index stems", lambda: {(m, mod): path for m, mod, path in
                                                 atlas.sql("SELECT model_id, modality, path FROM indexes").fetchall()})
    return stems.get((model_id, modality))


def index_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT model_id, modality, kind, n_vectors, recall_at_10 FROM indexes ORDER BY ALL").fetchall()
    return [{"model_id": i, "modality": m, "kind": k, "vectors": n, "recall_at_10": r} for i, m, k, n, r in rows]


def indexed_models(atlas: Atlas) -> list[str]:
    """Ids of the models that have at least one index."""
    return [r[0] for r in atlas.sql("SELECT DISTINCT model_id FROM indexes ORDER BY 1").fetchall()]
