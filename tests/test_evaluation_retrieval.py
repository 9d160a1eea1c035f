"""evaluate_retrieval: report layout, per-class table with rare classes, overlap, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation import evaluate_ranking, evaluate_retrieval
from threads_search.evaluation.metrics import METRICS


def _cohort(seed: int, n_queries: int = 60, n_database: int = 120, noise: float = 1.0):
    """Clustered embeddings with imbalanced labels, two items per patient, disjoint sides."""
    rng = np.random.default_rng(seed)
    names = np.array(["luad", "lusc", "meso", "sclc"])
    centres = rng.normal(size=(4, 16)) * 2
    n = n_queries + n_database
    labels = rng.choice(names, size=n, p=[0.45, 0.35, 0.15, 0.05])
    vectors = centres[np.searchsorted(names, labels)] + noise * rng.normal(size=(n, 16))
    patients = np.array([f"P{i // 2}" for i in range(n)])
    q, d = slice(0, n_queries), slice(n_queries, None)
    return vectors[q], labels[q], patients[q], vectors[d], labels[d], patients[d]


def test_json_has_the_spec_layout_for_every_k():
    report = evaluate_retrieval(*_cohort(0), ks=(1, 5, 10), n_bootstrap=50)
    data = json.loads(report.to_json())
    for key in ("metrics", "ci95", "per_class", "n_queries", "n_database", "definitions"):
        assert key in data
    expected = [f"{name}@{k}" for k in (1, 5, 10) for name in ("mAP", "Acc", "MV", "mAP_trec")]
    assert list(data["metrics"]) == expected
    assert list(data["ci95"]) == expected
    assert all(len(data["ci95"][key]) == 2 for key in expected)
    assert (data["n_queries"], data["n_database"]) == (60, 120)
    assert {"mAP@K", "mAP_trec@K", "Acc@K", "MV@K", "chance", "ci95"} <= set(data["definitions"])
    assert list(data["chance"]["metrics"]) == expected
    assert len(data["precision_at"]) == 10
    assert data["n_overlap"] is None


def test_metrics_are_the_means_of_the_per_query_values():
    report = evaluate_retrieval(*_cohort(1), ks=(5,), n_bootstrap=0)
    for name in METRICS:
        key = f"{name}@5"
        assert report.model.metrics[key] == pytest.approx(report.per_query[key].mean())
        assert report.chance.metrics[key] == pytest.approx(report.per_query[f"chance_{key}"].mean())
    assert np.isnan(report.model.ci95["mAP@5"]).all()  # no bootstrap asked
    assert json.loads(report.to_json())["ci95"]["mAP@5"] == [None, None]


def test_a_clustered_model_beats_chance():
    report = evaluate_retrieval(*_cohort(2, noise=0.5), ks=(5,), n_bootstrap=0)
    assert report.model.metrics["mAP@5"] > 0.8
    assert report.chance.metrics["mAP@5"] < 0.4


def test_per_class_table_shows_rare_and_unretrievable_classes():
    vectors = np.eye(6)
    # 'rare' has one query and one database item, both of patient P1: it can never be found.
    # 'pair' has one query and one database item of another patient: retrieved at rank 1.
    query_labels = ["common", "rare", "pair"]
    query_patients = ["P0", "P1", "P2"]
    db_labels = ["common", "common", "rare", "pair", "common", "dbonly"]
    db_patients = ["P5", "P6", "P1", "P7", "P8", "P9"]
    db_vectors = vectors.copy()
    queries = vectors[[0, 2, 3]]  # each query equals a database item
    report = evaluate_retrieval(
        queries, query_labels, query_patients, db_vectors, db_labels, db_patients,
        ks=(1, 2), n_bootstrap=20, query_ids=["s0", "s2", "s3"], db_ids=[f"s{i}" for i in range(6)],
    )
    per_class = report.to_dict()["per_class"]
    assert per_class["rare"]["n_queries"] == 1 and per_class["rare"]["n_database"] == 1
    assert per_class["rare"]["mAP@1"] == 0.0 and per_class["rare"]["Acc@2"] == 0.0
    assert per_class["pair"]["mAP@1"] == 1.0 and per_class["pair"]["mAP_trec@1"] == 1.0
    assert per_class["common"]["mAP@1"] == 1.0
    assert per_class["dbonly"]["n_queries"] == 0 and per_class["dbonly"]["mAP@1"] is None
    assert any("'rare'" in note and "0 by construction" in note for note in report.warnings)
    assert report.n_overlap == 3
    assert any("3 query items are also database items" in note for note in report.warnings)


def test_extra_query_columns_give_per_group_tables():
    queries, labels, patients, db, db_labels, db_patients = _cohort(3)
    sites = np.where(np.arange(60) < 20, "site1", "site2")
    report = evaluate_retrieval(
        queries, labels, patients, db, db_labels, db_patients, ks=(5,), n_bootstrap=0,
        extra_query_columns={"site": sites},
    )
    per_site = report.to_dict()["per_group"]["site"]
    assert per_site["site1"]["n_queries"] == 20 and per_site["site2"]["n_queries"] == 40
    expected = report.per_query["mAP@5"][:20].mean()
    assert per_site["site1"]["mAP@5"] == pytest.approx(expected)
    np.testing.assert_array_equal(report.per_query["site"], sites)


def test_short_rankings_are_padded_and_noted():
    report = evaluate_retrieval(
        np.eye(3)[:1], ["a"], ["P0"], np.eye(3), ["a", "a", "b"], ["P0", "P1", "P0"], ks=(3,), n_bootstrap=0
    )
    # only one eligible item (row 1, label a): P@1 = 1 -> mAP@3 = 1/3, mAP_trec@3 = 1
    assert report.model.metrics["mAP@3"] == pytest.approx(1 / 3)
    assert report.model.metrics["mAP_trec@3"] == 1.0
    assert any("fewer than K=3 eligible" in note for note in report.warnings)


def test_write_json_is_strict_json(tmp_path):
    report = evaluate_retrieval(*_cohort(4), ks=(1, 5), n_bootstrap=10)
    path = report.write_json(tmp_path / "eval.json")
    assert json.loads(path.read_text())["n_queries"] == 60
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_bad_input_is_refused():
    queries, labels, patients, db, db_labels, db_patients = _cohort(5, n_queries=4, n_database=8)
    with pytest.raises(InputError, match="K=9 is larger than the database"):
        evaluate_retrieval(queries, labels, patients, db, db_labels, db_patients, ks=(1, 9))
    with pytest.raises(InputError, match="query_vectors: is empty"):
        evaluate_retrieval(np.zeros((0, 16)), [], [], db, db_labels, db_patients, ks=(1,))
    with pytest.raises(InputError, match="db_vectors: is empty"):
        evaluate_retrieval(queries, labels, patients, np.zeros((0, 16)), [], [], ks=(1,))
    with pytest.raises(InputError, match="query_labels: row 2 is missing"):
        evaluate_retrieval(queries, ["a", "b", None, "c"], patients, db, db_labels, db_patients, ks=(1,))
    with pytest.raises(InputError, match="db_ids: id 'x' appears more than once"):
        evaluate_retrieval(
            queries, labels, patients, db, db_labels, db_patients, ks=(1,),
            query_ids=list("abcd"), db_ids=["x", "x", "y", "z", "u", "v", "w", "t"],
        )
    with pytest.raises(InputError, match="ks: cutoff 0"):
        evaluate_retrieval(queries, labels, patients, db, db_labels, db_patients, ks=(0,))


def test_evaluate_ranking_refuses_rankings_that_return_the_own_patient():
    with pytest.raises(InputError, match="row 0 ranks an item of the query's own patient"):
        evaluate_ranking(np.array([[0]]), ["a"], ["P0"], ["a", "b"], ["P0", "P1"], ks=(1,), n_bootstrap=0)
