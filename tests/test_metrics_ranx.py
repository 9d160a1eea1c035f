"""ranx as a third oracle for mAP_trec@K (its AP@k divides by the number of relevant docs).

Marked slow: ranx compiles its numba kernels on first use (about 30 s on a cold cache).
"""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.evaluation.ranking import rank_database
from threads_search.evaluation.retrieval import evaluate_ranking


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:unsafe cast")
def test_map_trec_matches_ranx():
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(3)
    query_labels = rng.choice(["a", "b", "c"], size=20)
    db_labels = rng.choice(["a", "b", "c"], size=50)
    query_patients = rng.integers(0, 30, size=20).astype(str)
    db_patients = rng.integers(0, 30, size=50).astype(str)
    indices, _ = rank_database(rng.normal(size=(20, 6)), rng.normal(size=(50, 6)), 10, query_patients, db_patients)
    report = evaluate_ranking(indices, query_labels, query_patients, db_labels, db_patients, ks=(5, 10), n_bootstrap=0)

    # Query ids are zero-padded because ranx returns per-query scores in sorted-id order.
    # ranx keeps only relevant documents in its qrels and needs one per query: every query
    # here has R_q > 0 (checked), so no query is dropped.
    qrels = {
        f"q{q:03d}": {
            f"d{d}": 1
            for d in range(50)
            if db_labels[d] == query_labels[q] and db_patients[d] != query_patients[q]
        }
        for q in range(20)
    }
    assert all(qrels.values())
    run = {
        f"q{q:03d}": {f"d{d}": float(10 - rank) for rank, d in enumerate(row) if d >= 0}
        for q, row in enumerate(indices)
    }
    scores = ranx.evaluate(ranx.Qrels(qrels), ranx.Run(run), ["map@5", "map@10"], return_mean=False)
    np.testing.assert_allclose(report.per_query["mAP_trec@5"], scores["map@5"], atol=1e-6)
    np.testing.assert_allclose(report.per_query["mAP_trec@10"], scores["map@10"], atol=1e-6)
