"""Sharded slide-level indexes (`index --shards N`), in the `index_shards` table (format 4).

Shard `s` of (model, modality) holds the items whose vid hashes to `s`
(`threads_search.indexer.shards`); its files are written first, then every shard of one build
is recorded in one transaction, replacing the previous build's rows, so a reader sees either
the old shard set or the new one, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass

from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import file_checksum


@dataclass(frozen=True)
class ShardRecord:
    shard: int
    n_shards: int
    stem: str | None  # None: no item hashes to this shard
    kind: str | None
    n_vectors: int


def record_shards(atlas: Atlas, model_id: str, modality: str, shards: list[tuple[int, str | None, dict | None]],
                  n_shards: int) -> None:
    """Record every shard of one build: (shard, stem or None, sidecar or None) for shards 0..n_shards-1."""
    now = utc_now()
    with atlas.transaction():
        atlas.sql("DELETE FROM index_shards WHERE model_id = ? AND modality = ?", [model_id, modality])
        for shard, stem, sidecar in shards:
            atlas.sql("INSERT INTO index_shards (model_id, modality, shard, n_shards, path, kind, n_vectors, recall_at_10, "
                      "built_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [model_id, modality, shard, n_shards, stem, sidecar["kind"] if sidecar else None,
                       int(sidecar["count"]) if sidecar else 0, sidecar.get("recall_at_10") if sidecar else None, now,
                       file_checksum(atlas.path(stem + ".faiss")) if stem else None])


def shard_records(atlas: Atlas, model_id: str, modality: str) -> list[ShardRecord]:
    """The recorded shards of (model, modality) in shard order; [] when it is not sharded."""
    rows = atlas.sql("SELECT shard, n_shards, path, kind, n_vectors FROM index_shards WHERE model_id = ? AND modality = ? "
                     "ORDER BY shard", [model_id, modality]).fetchall()
    return [ShardRecord(int(s), int(n), p, k, int(v)) for s, n, p, k, v in rows]


def forget_shards(atlas: Atlas, model_id: str, modality: str) -> None:
    with atlas.transaction():
        atlas.sql("DELETE FROM index_shards WHERE model_id = ? AND modality = ?", [model_id, modality])


def shard_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("SELECT model_id, modality, any_value(n_shards), sum(n_vectors) FROM index_shards "
                     "GROUP BY model_id, modality ORDER BY ALL").fetchall()
    return [{"model_id": i, "modality": m, "shards": int(n), "vectors": int(v)} for i, m, n, v in rows]
