"""Molecular profiles of the atlas: one Parquet file per ingest batch (`profiles/<batch>.parquet`,
raw values as read) recorded in `profile_batches`, and one `profiles` row per sample.
"""

from __future__ import annotations

import numpy as np

from threads_search.atlas import layout
from threads_search.atlas.arrow import float32_matrix
from threads_search.atlas.parquet import read_atlas_parquet
from threads_search.atlas.store import Atlas, utc_now
from threads_search.atomic import atomic_path, file_checksum
from threads_search.readers.profiles import ProfileMatrix


def batch_of_samples(atlas: Atlas, modality: str) -> dict[str, str]:
    """sample_id -> batch id of one modality's stored profiles."""
    return dict(atlas.sql("SELECT sample_id, batch_id FROM profiles WHERE modality = ?", [modality]).fetchall())


def batch_exists(atlas: Atlas, batch_id: str) -> bool:
    return atlas.sql("SELECT count(*) FROM profile_batches WHERE batch_id = ?", [batch_id]).fetchone()[0] > 0


def write_batch_file(atlas: Atlas, batch_id: str, profile: ProfileMatrix) -> str:
    """Write a batch's matrix as Parquet (atomically); returns its path relative to the atlas."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    relative = layout.profile_batch(batch_id)
    values = pa.FixedSizeListArray.from_arrays(pa.array(profile.values.reshape(-1), type=pa.float32()), len(profile.genes))
    table = pa.table({"sample_id": pa.array(profile.sample_ids, type=pa.string()), "values": values})
    with atomic_path(atlas.path(relative)) as temporary:
        pq.write_table(table, temporary)
    return relative


def record_batch(atlas: Atlas, batch_id: str, modality: str, profile: ProfileMatrix, fingerprint: str, relative: str,
                 scale: str, reason: str) -> None:
    """Record a written batch file (inside the caller's transaction)."""
    atlas.sql("INSERT INTO profile_batches (batch_id, modality, source, fingerprint, parquet, genes, scale, scale_reason, "
              "n_samples, ingested_at, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                  batch_id, modality, str(profile.path.resolve()), fingerprint, relative, profile.genes, scale, reason,
                  len(profile.sample_ids), utc_now(), file_checksum(atlas.path(relative))])


def record_samples(atlas: Atlas, modality: str, batch_id: str, samples: list[str], rows: list[int]) -> None:
    """Point samples at their rows of a batch (inside the caller's transaction); nothing for no samples."""
    import pyarrow as pa

    if not samples:
        return
    incoming = pa.table({"modality": pa.array([modality] * len(samples), pa.string()),
                         "sample_id": pa.array(samples, pa.string()),
                         "batch_id": pa.array([batch_id] * len(samples), pa.string()),
                         "row_index": pa.array(rows, pa.int32())})
    with atlas.registered("incoming_profiles", incoming):
        atlas.sql("INSERT OR REPLACE INTO profiles SELECT * FROM incoming_profiles")


def expression_scale(atlas: Atlas) -> tuple[str, str] | None:
    """(scale, reason) of the newest expression batch, or None."""
    row = atlas.sql("SELECT scale, scale_reason FROM profile_batches WHERE modality = 'expression' "
                    "ORDER BY ingested_at DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else None


def batch_summaries(atlas: Atlas) -> list[dict]:
    rows = atlas.sql("""SELECT modality, batch_id, n_samples, len(genes), scale, scale_reason, source
                        FROM profile_batches ORDER BY modality, ingested_at""").fetchall()
    return [{"modality": m, "batch": b, "samples": n, "genes": g, "scale": s, "scale_reason": r, "source": src}
            for m, b, n, g, s, r, src in rows]


def load_profiles(atlas: Atlas, modality: str, sample_ids: list[str] | None = None) -> list[ProfileMatrix]:
    """Stored profiles of one modality, one `ProfileMatrix` per ingest batch (each with its own genes)."""
    batches = atlas.sql("SELECT batch_id, parquet, genes, scale FROM profile_batches WHERE modality = ? ORDER BY batch_id",
                        [modality]).fetchall()
    wanted = set(sample_ids) if sample_ids is not None else None
    matrices = []
    for batch_id, relative, genes, scale in batches:
        rows = atlas.sql("SELECT sample_id, row_index FROM profiles WHERE batch_id = ? ORDER BY row_index", [batch_id]).fetchall()
        rows = [(s, r) for s, r in rows if wanted is None or s in wanted]
        if not rows:
            continue
        table = read_atlas_parquet(atlas, relative, "profile batch")
        values = float32_matrix(table.column("values"))
        indices = np.array([r for _, r in rows], dtype=np.int64)
        matrices.append(ProfileMatrix(path=atlas.path(relative), sample_ids=[s for s, _ in rows], genes=list(genes),
                                      values=values[indices], scale=scale))
    return matrices
