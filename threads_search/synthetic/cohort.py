"""Seeded semi-synthetic paired cohort: TRIDENT feature bags, TPM expression, a MAF, metadata.

The demo, the tests and the benchmarks use it to exercise the same ingestion path as a
user's data (SPEC §3, §8). Layout written under `out_dir`:

    features/<slide_id>.h5   TRIDENT layout: `features` (n, D) float16, `coords` (n, 2) int64
    expression.csv           sample_id + one column per gene, TPM (un-logged)
    mutations.maf            tab-separated MAF (`#version 2.4` first line)
    slides.csv               slide_id, patient_id, site, cohort, subtype, stage, age, sex
    samples.csv              sample_id, patient_id, site, cohort, subtype
    cohort.json              the config and summary that produced the files

Ids are TCGA-like: patient `SYN-S3-0042`, slide `SYN-S3-0042-01Z-00-DX1`, sample
`SYN-S3-0042-01A`. The generative model is described in `synthetic_bags` (slides) and
`synthetic_molecular` (profiles); `CohortFiles.truth` exposes the hidden state for tests.

    >>> files = generate_cohort(tmp_dir, quick_config(seed=1))
    >>> files.summary.n_slides, files.slides_csv
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from threads_search.errors import InputError
from threads_search.synthetic.bags import draw_feature_world, slide_bag
from threads_search.synthetic.config import CohortConfig, demo_config, quick_config
from threads_search.synthetic.design import Patients, Slides, draw_patients, draw_slides
from threads_search.synthetic.io import (
    write_csv,
    write_expression_csv,
    write_json,
    write_maf,
    write_trident_h5,
)
from threads_search.synthetic.molecular import (
    MAF_COLUMNS,
    draw_molecular_world,
    expression_tpm,
    mutation_records,
)

__all__ = [
    "CohortConfig",
    "CohortFiles",
    "CohortSummary",
    "CohortTruth",
    "demo_config",
    "generate_cohort",
    "quick_config",
]

GENERATOR_VERSION = 1  # bump when the same seed starts to mean a different cohort
SLIDE_COLUMNS = ("slide_id", "patient_id", "site", "cohort", "subtype", "stage", "age", "sex")
SAMPLE_COLUMNS = ("sample_id", "patient_id", "site", "cohort", "subtype")


@dataclass(frozen=True)
class CohortSummary:
    """Counts describing a generated cohort (JSON-ready via `to_dict`)."""

    n_patients: int
    n_slides: int
    n_patches: int
    n_expression_samples: int
    n_mutation_samples: int
    n_mutations: int
    n_genes: int
    n_unpaired_slides: int
    subtype_counts: dict[str, int]
    heldout_subtype_counts: dict[str, int]
    site_patient_counts: dict[str, int]
    heldout_sites: tuple[str, ...]

    def to_dict(self) -> dict:
        summary = asdict(self)
        summary["heldout_sites"] = list(self.heldout_sites)
        return summary


@dataclass(frozen=True)
class CohortTruth:
    """Hidden ground truth, for tests and diagnostics; never written to the metadata files.

    patient_state: (n_patients, latent_dim) float64, rows in `patient_ids` order.
    tumour_masks: slide_id -> (n_patches,) bool, aligned with the rows of the HDF5 file.
    """

    patient_ids: tuple[str, ...]
    patient_state: np.ndarray
    tumour_masks: dict[str, np.ndarray]


@dataclass(frozen=True)
class CohortFiles:
    """Paths written by `generate_cohort`, the config used, a summary and the hidden truth."""

    root: Path
    features_dir: Path
    feature_paths: tuple[Path, ...]
    expression_csv: Path
    mutations_maf: Path
    slides_csv: Path
    samples_csv: Path
    manifest_json: Path
    config: CohortConfig
    summary: CohortSummary
    truth: CohortTruth


def _cohort_name(config: CohortConfig, site_index: int) -> str:
    return "heldout" if site_index >= config.n_sites - config.n_heldout_sites else "train"


def _prepare_output(out_dir: Path, slide_ids: tuple[str, ...], overwrite: bool) -> Path:
    """Create `out_dir/features`; refuse to mix with an earlier cohort unless `overwrite`.

    With `overwrite`, `.h5` files of an earlier cohort that this one does not write are
    removed, so that `ingest slides features/*.h5` sees exactly this cohort.
    """
    features_dir = out_dir / "features"
    existing = sorted(features_dir.glob("*.h5")) if features_dir.is_dir() else []
    if existing and not overwrite:
        raise InputError(
            f"{features_dir}: already holds {len(existing)} .h5 files; "
            "choose an empty folder or pass overwrite=True"
        )
    features_dir.mkdir(parents=True, exist_ok=True)
    keep = {f"{slide_id}.h5" for slide_id in slide_ids}
    for stale in existing:
        if stale.name not in keep:
            stale.unlink()
    return features_dir


def _write_slides(config, patients: Patients, slides: Slides, features_dir: Path):
    """Generate and write every bag; returns (paths, tumour masks, total patches)."""
    world = draw_feature_world(config)
    paths, masks, n_patches = [], {}, 0
    for row, slide_id in enumerate(slides.slide_ids):
        bag = slide_bag(config, world, patients, slides, row)
        path = features_dir / f"{slide_id}.h5"
        write_trident_h5(path, slide_id, bag, config.encoder_name)
        paths.append(path)
        masks[slide_id] = bag.is_tumour
        n_patches += len(bag.is_tumour)
    return tuple(paths), masks, n_patches


def _write_metadata(config, patients: Patients, slides: Slides, slides_csv, samples_csv):
    def patient_columns(row: int) -> list:
        site = int(patients.site_index[row])
        return [
            patients.patient_ids[row],
            config.site_names[site],
            _cohort_name(config, site),
            config.subtypes[patients.subtype_index[row]],
        ]

    def clinical_columns(row: int) -> list:
        return [patients.stage[row], int(patients.age[row]), patients.sex[row]]

    write_csv(
        slides_csv,
        SLIDE_COLUMNS,
        (
            [slide_id, *patient_columns(row), *clinical_columns(row)]
            for slide_id, row in zip(slides.slide_ids, slides.patient_row)
        ),
    )
    profiled = np.flatnonzero(patients.has_expression | patients.has_mutations)
    write_csv(
        samples_csv,
        SAMPLE_COLUMNS,
        ([patients.sample_ids[row], *patient_columns(row)] for row in profiled),
    )


def _summarise(config, patients: Patients, slides: Slides, n_patches: int, n_mutations: int):
    subtype_names = [config.subtypes[k] for k in patients.subtype_index]
    heldout = patients.site_index >= config.n_sites - config.n_heldout_sites
    profiled = patients.has_expression | patients.has_mutations
    return CohortSummary(
        n_patients=len(patients),
        n_slides=len(slides),
        n_patches=n_patches,
        n_expression_samples=int(patients.has_expression.sum()),
        n_mutation_samples=int(patients.has_mutations.sum()),
        n_mutations=n_mutations,
        n_genes=config.n_genes,
        n_unpaired_slides=int((~profiled[slides.patient_row]).sum()),
        subtype_counts={name: subtype_names.count(name) for name in config.subtypes},
        heldout_subtype_counts={
            name: int(np.sum(heldout & (patients.subtype_index == k)))
            for k, name in enumerate(config.subtypes)
        },
        site_patient_counts=dict(
            sorted(Counter(config.site_names[s] for s in patients.site_index).items())
        ),
        heldout_sites=config.heldout_sites,
    )


def generate_cohort(
    out_dir: str | Path, config: CohortConfig | None = None, *, overwrite: bool = False
) -> CohortFiles:
    """Write a paired cohort under `out_dir` (see the module docstring for the layout).

    Deterministic: the same config (seed included) gives byte-identical files. Raises
    `InputError` if `out_dir/features` already holds `.h5` files and `overwrite` is False.
    """
    config = config if config is not None else demo_config()
    root = Path(out_dir)
    patients = draw_patients(config)
    slides = draw_slides(config, patients)
    molecular_world = draw_molecular_world(config)  # validates genes before any write
    features_dir = _prepare_output(root, slides.slide_ids, overwrite)

    feature_paths, masks, n_patches = _write_slides(config, patients, slides, features_dir)
    expression_rows, tpm = expression_tpm(config, molecular_world, patients)
    expression_csv = root / "expression.csv"
    write_expression_csv(
        expression_csv, [patients.sample_ids[r] for r in expression_rows], molecular_world.genes, tpm
    )
    records = mutation_records(config, molecular_world, patients)
    mutations_maf = root / "mutations.maf"
    write_maf(mutations_maf, MAF_COLUMNS, records)
    slides_csv, samples_csv = root / "slides.csv", root / "samples.csv"
    _write_metadata(config, patients, slides, slides_csv, samples_csv)

    summary = _summarise(config, patients, slides, n_patches, len(records))
    manifest_json = root / "cohort.json"
    write_json(
        manifest_json,
        {
            "generator": "threads_search.synthetic.cohort",
            "generator_version": GENERATOR_VERSION,
            "config": config.to_dict(),
            "summary": summary.to_dict(),
        },
    )
    truth = CohortTruth(patients.patient_ids, patients.state, masks)
    return CohortFiles(
        root=root,
        features_dir=features_dir,
        feature_paths=feature_paths,
        expression_csv=expression_csv,
        mutations_maf=mutations_maf,
        slides_csv=slides_csv,
        samples_csv=samples_csv,
        manifest_json=manifest_json,
        config=config,
        summary=summary,
        truth=truth,
    )
