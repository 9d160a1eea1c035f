"""`ingest expression` / `ingest mutations`: a profile file -> one Parquet batch + atlas rows.

The raw values are stored as read; the scale (counts, TPM-like, log, binary) is recorded and
the encoders normalise from it (log1p and per-gene standardisation for expression).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from threads_search.atlas.store import Atlas, upsert_items, utc_now
from threads_search.ingest.plan import IngestReport, plan_writes
from threads_search.ingest.metadata import MetadataTable, apply_metadata, coverage_warnings, read_metadata_csv
from threads_search.readers.profiles import ProfileMatrix, hash_file, read_expression, read_mutations, resolve_scale


def ingest_expression(atlas: Atlas, path: str | os.PathLike, metadata_csv: str | os.PathLike | None = None,
                      genes_as_rows: bool = False, scale: str = "auto", replace: bool = False,
                      strict: bool = False) -> IngestReport:
    """Record an expression matrix (any layout of SPEC §3) in the atlas."""
    profile = read_expression(path, genes_as_rows=genes_as_rows)
    resolved, reason = resolve_scale(profile, scale)
    return _ingest_profile(atlas, "expression", profile, resolved, reason, metadata_csv, replace, strict)


def ingest_mutations(atlas: Atlas, path: str | os.PathLike, metadata_csv: str | os.PathLike | None = None,
                     replace: bool = False, strict: bool = False) -> IngestReport:
    """Record mutations (MAF or 0/1 matrix) as a samples x genes multi-hot batch."""
    profile = read_mutations(path)
    reason = "MAF: non-silent variants per sample and gene" if Path(path).suffix == ".maf" or profile.path.suffix == ".maf" else "0/1 matrix"
    return _ingest_profile(atlas, "mutations", profile, "binary", reason, metadata_csv, replace, strict)


def _check_metadata_coverage(metadata: MetadataTable, profile: ProfileMatrix, strict: bool, report: IngestReport) -> dict:
    if metadata.key_column != "sample_id":
        return {}
    keys = metadata.keys
    report.warnings += coverage_warnings(metadata, profile.sample_ids, profile.path, "sample", strict)
    return {k: (str(p) if p is not None else None) for k, p in zip(keys, metadata.column("patient_id"))}


def _write_batch_parquet(atlas: Atlas, relative: str, profile: ProfileMatrix) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pa.FixedSizeListArray.from_arrays(pa.array(profile.values.reshape(-1), type=pa.float32()), len(profile.genes))
    table = pa.table({"sample_id": pa.array(profile.sample_ids, type=pa.string()), "values": values})
    destination = atlas.path(relative)
    temporary = destination.with_name(f".{destination.name}.tmp-{os.getpid()}")
    pq.write_table(table, temporary)
    os.replace(temporary, destination)


def _ingest_profile(atlas: Atlas, modality: str, profile: ProfileMatrix, scale: str, reason: str,
                    metadata_csv, replace: bool, strict: bool) -> IngestReport:
    report = IngestReport()
    metadata = read_metadata_csv(metadata_csv, "sample_id") if metadata_csv else None
    patient_of = _check_metadata_coverage(metadata, profile, strict, report) if metadata else {}
    fingerprint = hash_file(profile.path)
    batch_id = f"{modality}-{fingerprint[:16]}"
    existing_batch = {row[0]: row[1] for row in atlas.sql(
        "SELECT sample_id, batch_id FROM profiles WHERE modality = ?", [modality]).fetchall()}
    new_samples = plan_writes(profile.sample_ids, [batch_id] * len(profile.sample_ids), existing_batch, replace, report,
                              lambda k: f"{profile.path}: sample '{profile.sample_ids[k]}' is already in the atlas "
                                        f"({modality}) from another file")
    relative = f"profiles/{batch_id}.parquet"
    already_stored = atlas.sql("SELECT count(*) FROM profile_batches WHERE batch_id = ?", [batch_id]).fetchone()[0] > 0
    wrote_file = False
    try:
        if new_samples and not already_stored:
            _write_batch_parquet(atlas, relative, profile)
            wrote_file = True
        with atlas.transaction():
            if new_samples and not already_stored:
                atlas.sql("INSERT INTO profile_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                    batch_id, modality, str(profile.path.resolve()), fingerprint, relative, profile.genes, scale, reason,
                    len(profile.sample_ids), utc_now()])
            samples = [profile.sample_ids[row] for row in new_samples]
            atlas.connection.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?)",
                                         [[modality, sample, batch_id, row] for sample, row in zip(samples, new_samples)])
            upsert_items(atlas, modality, samples, [patient_of.get(sample) for sample in samples])
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, modality)
    except BaseException:
        if wrote_file:
            atlas.path(relative).unlink(missing_ok=True)
        raise
    return report


def load_profiles(atlas: Atlas, modality: str, sample_ids: list[str] | None = None) -> list[ProfileMatrix]:
    """Stored profiles of one modality, one `ProfileMatrix` per ingest batch (each with its own genes)."""
    import pyarrow.parquet as pq

    batches = atlas.sql("SELECT batch_id, parquet, genes, scale FROM profile_batches WHERE modality = ? ORDER BY batch_id", [modality]).fetchall()
    wanted = set(sample_ids) if sample_ids is not None else None
    matrices = []
    for batch_id, relative, genes, scale in batches:
        rows = atlas.sql("SELECT sample_id, row_index FROM profiles WHERE batch_id = ? ORDER BY row_index", [batch_id]).fetchall()
        rows = [(s, r) for s, r in rows if wanted is None or s in wanted]
        if not rows:
            continue
        table = pq.read_table(atlas.path(relative))
        values = np.asarray(table.column("values").combine_chunks().flatten().to_numpy(), dtype=np.float32).reshape(table.num_rows, len(genes))
        indices = np.array([r for _, r in rows], dtype=np.int64)
        matrices.append(ProfileMatrix(path=atlas.path(relative), sample_ids=[s for s, _ in rows], genes=list(genes), values=values[indices], scale=scale))
    return matrices
