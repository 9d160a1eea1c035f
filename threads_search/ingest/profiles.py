"""`ingest expression` / `ingest mutations`: profile files -> one Parquet batch each + atlas rows.

The raw values are stored as read; the scale (counts, TPM-like, log, binary) is recorded and
the encoders normalise from it (log1p and per-gene standardisation for expression).

Sample metadata a file carries itself (AnnData `obs`) is applied like a `--metadata` table
keyed by sample_id (its `patient_id` pairs samples with slides). A `--metadata` file is applied
after it and wins: for a sample the file lists, the file's columns replace obs's, empty cells
included; obs fills the columns the file lacks and the samples it does not list.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from threads_search.atlas import layout
from threads_search.atlas.items import upsert_items
from threads_search.atlas.metadata import apply_metadata, metadata_changes
from threads_search.atlas.profiles import batch_exists, batch_of_samples, record_batch, record_samples, write_batch_file
from threads_search.atlas.store import Atlas
from threads_search.errors import InputError
from threads_search.ingest.coverage import coverage_warnings
from threads_search.ingest.plan import IngestReport, plan_writes
from threads_search.readers.metadata_csv import MetadataTable, read_metadata_csv
from threads_search.readers.profiles import hash_file, read_expression, read_mutations, resolve_scale


Paths = str | os.PathLike | Sequence[str | os.PathLike]


def _paths(paths) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]


def ingest_expression(atlas: Atlas, paths: Paths, metadata_csv: str | os.PathLike | None = None,
                      genes_as_rows: bool = False, scale: str = "auto", replace: bool = False,
                      strict: bool = False, layer: str | None = None) -> IngestReport:
    """Record expression matrices (any layout of SPEC §3) in the atlas, one batch per file.

    `layer` reads an AnnData file's `layers/<layer>` instead of `X`. Every file is read and
    checked before anything is written; then all are written in one transaction.
    """
    batches = []
    for path in _paths(paths):
        profile = read_expression(path, genes_as_rows=genes_as_rows, layer=layer)
        batches.append((profile, *resolve_scale(profile, scale)))
    return _ingest_profiles(atlas, "expression", batches, metadata_csv, replace, strict)


def ingest_mutations(atlas: Atlas, paths: Paths, metadata_csv: str | os.PathLike | None = None,
                     replace: bool = False, strict: bool = False) -> IngestReport:
    """Record mutations (MAF or 0/1 matrix) as samples x genes multi-hot batches, one per file."""
    batches = []
    for path in _paths(paths):
        profile = read_mutations(path)
        reason = "MAF: non-silent variants per sample and gene" if profile.path.suffix == ".maf" else "0/1 matrix"
        batches.append((profile, "binary", reason))
    return _ingest_profiles(atlas, "mutations", batches, metadata_csv, replace, strict)


def _check_metadata_coverage(metadata: MetadataTable, sample_ids: list[str], source: Path, strict: bool,
                             report: IngestReport) -> dict:
    if metadata.key_column != "sample_id":
        return {}
    report.warnings += coverage_warnings(metadata, sample_ids, source, "sample", strict)
    return _patients(metadata)


def _patients(metadata: MetadataTable) -> dict:
    """sample id -> patient id of a sample-keyed table ({} without a patient_id column)."""
    if "patient_id" not in metadata.table.column_names:
        return {}
    return {k: (str(p) if p is not None else None) for k, p in zip(metadata.keys, metadata.column("patient_id"))}


def _file_metadata(batches, metadata: MetadataTable | None, report: IngestReport) -> dict[Path, MetadataTable]:
    """file -> the sample table it carries (AnnData obs); notes obs columns a --metadata file overrides."""
    tables = {}
    for profile, _, _ in batches:
        report.warnings += profile.notes
        if profile.sample_metadata is None:
            continue
        table = MetadataTable(path=profile.path, key_column="sample_id", table=profile.sample_metadata)
        shared = [c for c in table.table.column_names if c != "sample_id"
                  and metadata is not None and c in metadata.table.column_names]
        if shared:
            report.warnings.append(f"{metadata.path}: column(s) {', '.join(shared)} also in {profile.path}'s obs; "
                                   f"the --metadata values are used for the {metadata.key_column}s it lists")
        tables[profile.path] = table
    return tables


def _refuse_duplicates_across(batches) -> None:
    first_file: dict[str, Path] = {}
    for profile, _, _ in batches:
        for sample in profile.sample_ids:
            if sample in first_file:
                raise InputError(f"{profile.path}: sample '{sample}' is also in {first_file[sample]}; one file per sample")
            first_file[sample] = profile.path


def _ingest_profiles(atlas: Atlas, modality: str, batches, metadata_csv, replace: bool, strict: bool) -> IngestReport:
    report = IngestReport()
    _refuse_duplicates_across(batches)
    metadata = read_metadata_csv(metadata_csv, "sample_id") if metadata_csv else None
    all_samples = [s for profile, _, _ in batches for s in profile.sample_ids]
    source = batches[0][0].path if len(batches) == 1 else batches[0][0].path.parent
    file_metadata = _file_metadata(batches, metadata, report)
    patient_of = {k: v for table in file_metadata.values() for k, v in _patients(table).items()}
    if metadata:
        patient_of.update(_check_metadata_coverage(metadata, all_samples, source, strict, report))
    existing_batch = batch_of_samples(atlas, modality)
    plans = []
    for profile, scale, reason in batches:
        fingerprint = hash_file(profile.path)
        batch_id = f"{modality}-{fingerprint[:16]}"
        new_rows = plan_writes(profile.sample_ids, [batch_id] * len(profile.sample_ids), existing_batch, replace, report,
                               lambda k, profile=profile: f"{profile.path}: sample '{profile.sample_ids[k]}' is already "
                                                          f"in the atlas ({modality}) from another file")
        plans.append((profile, scale, reason, fingerprint, batch_id, new_rows))
    report.added = sum(len(rows) for *_, rows in plans) - report.replaced
    if not report.added and not report.replaced:
        matched, changed = metadata_changes(atlas, metadata, modality) if metadata is not None else (0, 0)
        if not changed:  # a re-run: nothing to write, so nothing is written
            report.metadata_rows_matched = matched
            return report
    written: list[str] = []
    try:
        for profile, _, _, _, batch_id, new_rows in plans:
            if new_rows and not batch_exists(atlas, batch_id):
                written.append(write_batch_file(atlas, batch_id, profile))
        with atlas.transaction():
            for profile, scale, reason, fingerprint, batch_id, new_rows in plans:
                if not new_rows:
                    continue
                if not batch_exists(atlas, batch_id):
                    record_batch(atlas, batch_id, modality, profile, fingerprint, layout.profile_batch(batch_id), scale, reason)
                samples = [profile.sample_ids[row] for row in new_rows]
                record_samples(atlas, modality, batch_id, samples, new_rows)
                upsert_items(atlas, modality, samples, [patient_of.get(sample) for sample in samples])
                if profile.path in file_metadata:  # before --metadata, which overrides it
                    apply_metadata(atlas, file_metadata[profile.path], modality)
            if metadata is not None:
                report.metadata_rows_matched = apply_metadata(atlas, metadata, modality)
    except BaseException:
        for relative in written:
            atlas.path(relative).unlink(missing_ok=True)
        raise
    return report
