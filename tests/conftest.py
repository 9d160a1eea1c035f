"""Shared fixtures: small seeded feature files and tables written on tmp_path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest


def write_trident(path: Path, features: np.ndarray, encoder: str | None = "conch_v15", coords: np.ndarray | None = None) -> Path:
    """A TRIDENT-layout file: `features` (N, D), `coords` (N, 2) int64 with TRIDENT's attributes
    (`encoder=None`: no `encoder` attribute, as older TRIDENT versions write them)."""
    import h5py

    n = features.shape[0]
    if coords is None:
        coords = np.stack([np.arange(n) % 50 * 1024, np.arange(n) // 50 * 1024], axis=1).astype(np.int64)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features)
        dataset = handle.create_dataset("coords", data=coords)
        dataset.attrs.update({"patch_size": 512, "patch_size_level0": 1024, "level0_magnification": 40,
                              "target_magnification": 20, "name": path.stem})
        handle["features"].attrs.update({"name": path.stem, "savetodir": str(path.parent)})
        if encoder is not None:
            handle["features"].attrs["encoder"] = encoder
    return path


def write_clam(path: Path, features: np.ndarray) -> Path:
    import h5py

    n = features.shape[0]
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features)
        coords = handle.create_dataset("coords", data=np.zeros((n, 2), np.int64))
        coords.attrs.update({"patch_level": 0, "patch_size": 256})
    return path


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one thread for the module: two-core CI machines, no oversubscription."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def feature_folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Six TRIDENT files (float16, 768-d) of three patients, two slides each."""
    folder = tmp_path / "features"
    folder.mkdir()
    for patient in range(3):
        for slide in range(2):
            n = int(rng.integers(20, 60))
            write_trident(folder / f"P{patient}-S{slide}.h5", rng.normal(size=(n, 768)).astype(np.float16))
    return folder


@pytest.fixture
def slide_metadata(tmp_path: Path) -> Path:
    rows = [[f"P{p}-S{s}", f"P{p}", "siteA" if p < 2 else "siteB", ["luminal", "basal", "her2"][p]]
            for p in range(3) for s in range(2)]
    return write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id", "site", "subtype"], rows)


@pytest.fixture
def expression_csv(tmp_path: Path, rng: np.random.Generator) -> Path:
    """TPM-like expression of the three patients over 40 genes."""
    genes = [f"G{i:03d}" for i in range(40)]
    values = np.exp(rng.normal(2, 2, size=(3, 40))).round(3)
    return write_csv(tmp_path / "expression.csv", ["sample_id"] + genes,
                     [[f"P{p}-01A"] + list(values[p]) for p in range(3)])


@pytest.fixture
def sample_metadata(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "samples.csv", ["sample_id", "patient_id"], [[f"P{p}-01A", f"P{p}"] for p in range(3)])


def ingest_quick_cohort(root: Path, seed: int = 3, slides: list[Path] | None = None):
    """A quick synthetic cohort under `root/cohort`, ingested (slides, expression) into `root/atlas`.

    Returns (atlas path, CohortFiles). `slides` restricts which feature files are ingested.
    """
    from typer.testing import CliRunner

    from threads_search.cli.app import app
    from threads_search.synthetic.cohort import generate_cohort
    from threads_search.synthetic.config import quick_config

    cohort = generate_cohort(root / "cohort", quick_config(seed=seed))
    path = root / "atlas"
    runner = CliRunner()
    for args in (("init", path), ("ingest", "slides", path, *(slides or [cohort.features_dir]), "--metadata", cohort.slides_csv),
                 ("ingest", "expression", path, cohort.expression_csv, "--metadata", cohort.samples_csv)):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return path, cohort


def store_fitted_baseline(path: Path, where_sql: str | None = None) -> str:
    """Fit the mean-pooling model on the atlas's (selected) pairs and store it; returns its id."""
    from threads_search.atlas.store import open_atlas
    from threads_search.atlas.stored_models import store_model
    from threads_search.training.job import _fitted_baseline, paired_dataset
    from threads_search.training.trainer import TrainingConfig

    with open_atlas(path) as atlas:
        dataset = paired_dataset(atlas, where_sql)
        config = TrainingConfig(model={"in_dim": int(atlas.meta("feature_dim")), "patch_encoder": atlas.meta("patch_encoder")})
        return store_model(atlas, _fitted_baseline(dataset, config))


def indexed_quick_atlas(root: Path, kind: str = "auto") -> tuple[Path, str]:
    """A quick cohort ingested, a fitted mean-pooling model stored, embedded and indexed (`kind`);
    returns the atlas path and the model id."""
    from threads_search.atlas.store import open_atlas
    from threads_search.jobs.embed import embed_atlas
    from threads_search.jobs.index import build_atlas_indexes

    path, _ = ingest_quick_cohort(root)
    model_id = store_fitted_baseline(path, "cohort = 'train'")
    with open_atlas(path) as opened:
        embed_atlas(opened, model_id)
        build_atlas_indexes(opened, model_id, kind=kind)
    return path, model_id


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every distributed test; skipped without the `ray` extra."""
    ray = pytest.importorskip("ray", reason="the `ray` extra is not installed")
    import logging

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()
