"""`ingest expression` / `ingest mutations`: a profile file -> one Parquet batch + atlas rows.

The raw values are stored as read; the scale (counts, TPM-like, log, binary) is recorded and
the encoders normalise from it (log1p and per-gene standardisation for expression).
"""

from __future__ import annotations

import os
from pathlib import Path

from threads_search.atlas.items import upsert_items
from threads_search.atlas.metadata import apply_metadata
from threads_search.atlas.profiles import batch_exists, batch_of_samples, record_batch, record_samples, write_batch_file
from threads_search.atlas.store import Atlas
from threads_search.ingest.coverage import coverage_warnings
from threads_search.ingest.plan import IngestReport, plan_writes
from threads_search.readers.metadata_csv import MetadataTable, read_metadata_csv
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


def _ingest_profile(atlas: Atlas, modality: str, profile: ProfileMatrix, scale: str, reason: str,
                    metadata_csv, replace: bool, strict: bool) -> IngestReport:
    report = IngestReport()
    metadata = read_metadata_csv(metadata_csv, "sample_id") if metadata_csv else None
    patient_of = _check_metadata_coverage(metadata, profile, strict, report) if metadata else {}
    fingerprint = hash_file(profile.path)
    batch_id = f"{modality}-{fingerprint[:16]}"
    existing_batch = batch_of_samples(atlas, modality)
    new_samples = plan_writes(profile.sample_ids, [batch_id] * len(profile.sample_ids), existing_batch, replace, report,
                              lambda k: f"{profile.path}: sample '{profile.sample_ids[k]}' is already in the atlas "
                                        f"({modality}) from another file")
    if not new_samples:
        if metadata is not None:
            with atlas.transaction():
                report.metadata_rows_matched = apply_metadata(atlas, metadata, modality)
        return report
    already_stored = batch_exists(atlas, batch_id)
    relative = None
    try:
        if not already_stored:
            relative = write_batch_file(atlas, batch_id, profile)
        with atlas.transaction():
            if not already_stored:
                record_batch(atlas, batch_id, modality, profile, fingerprint, relative, scale, reason)
            samples = [profile.sample_ids[row] for row in new_samples]
            record_samples(atlas, modality, batch_id, samples, new_samples)
            upsert_items(atlas, modality, samples, [patient_of.get(sample) for sample in samples])
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, modality)
    except BaseException:
        if relative is not None:
            atlas.path(relative).unlink(missing_ok=True)
        raise
    return report
