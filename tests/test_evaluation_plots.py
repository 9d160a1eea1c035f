"""Plots: PNG files a person can read, written atomically, for model + baseline + chance."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation import evaluate_retrieval, fewshot_curve, write_plots
from threads_search.evaluation.plots import project_2d


@pytest.fixture(scope="module")
def reports_and_embeddings():
    rng = np.random.default_rng(0)
    labels = rng.choice(["luad", "lusc", "rare"], size=80, p=[0.5, 0.4, 0.1])
    sites = rng.choice(["siteA", "siteB"], size=80)
    centres = {"luad": 0, "lusc": 1, "rare": 2}
    vectors = np.eye(8)[[centres[label] for label in labels]] * 2 + rng.normal(size=(80, 8))
    patients = np.arange(80)
    def report(embeddings, name):
        query, database = slice(0, 30), slice(30, None)
        return evaluate_retrieval(
            *(embeddings[query], labels[query], patients[query]),
            *(embeddings[database], labels[database], patients[database]),
            ks=(1, 5),
            n_bootstrap=50,
            name=name,
        )

    model = report(vectors, "THREADS")
    baseline = report(vectors + 3 * rng.normal(size=vectors.shape), "mean-pooling")
    return [model, baseline], vectors, labels, sites


def test_writes_readable_pngs(tmp_path, reports_and_embeddings):
    from matplotlib.image import imread

    reports, vectors, labels, sites = reports_and_embeddings
    curve = fewshot_curve(vectors[:40], labels[:40], vectors[40:], labels[40:], shots=(1, 2), n_repeats=2)
    paths = write_plots(
        reports,
        tmp_path / "plots",
        embeddings=vectors,
        embedding_labels=labels,
        embedding_sites=sites,
        fewshot=curve,
    )
    assert [p.name for p in paths] == [
        "per_class_mAP@5.png",
        "precision_at_k.png",
        "embedding_projection.png",
        "fewshot_curve.png",
    ]
    for path in paths:
        image = imread(path)
        assert image.shape[0] >= 600 and image.shape[1] >= 800, path.name
        assert image.std() > 0.05, path.name  # something was drawn
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in paths)


def test_single_report_and_explicit_k(tmp_path, reports_and_embeddings):
    reports, *_ = reports_and_embeddings
    paths = write_plots(reports[0], tmp_path, k=1)
    assert [p.name for p in paths] == ["per_class_mAP@1.png", "precision_at_k.png"]
    with pytest.raises(InputError, match="k: 3 is not among the reported cutoffs"):
        write_plots(reports[0], tmp_path, k=3)


def test_pca_projection_recovers_the_dominant_axis():
    rng = np.random.default_rng(1)
    vectors = np.zeros((50, 5))
    vectors[:, 3] = np.linspace(-10, 10, 50)
    vectors += 0.01 * rng.normal(size=vectors.shape)
    points, method = project_2d(vectors, "pca")
    assert method == "PCA"
    assert abs(np.corrcoef(points[:, 0], vectors[:, 3])[0, 1]) > 0.999


def test_umap_request_without_umap_is_a_clear_error():
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="umap-learn"):
            project_2d(np.random.default_rng(0).normal(size=(20, 4)), "umap")
    else:
        pytest.skip("umap is installed")
