"""Retrieval metrics of SPEC §7: hand-worked cases, trec_eval oracles, chance closed forms."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from threads_search.evaluation import chance
from threads_search.evaluation.metrics import (
    METRICS,
    RankedQueries,
    accuracy_at_k,
    majority_vote_at_k,
    map_at_k,
    map_trec_at_k,
    precision_at_ranks,
)
from threads_search.evaluation.ranking import rank_database
from threads_search.evaluation.retrieval import evaluate_ranking

A, B, C, D = 0, 1, 2, 3


@pytest.fixture
def hand_worked() -> RankedQueries:
    """Five queries with rankings worked by hand below (label codes, -1 = padding)."""
    return RankedQueries(
        query_labels=np.array([A, B, C, D, A]),
        ranked_labels=np.array(
            [
                [A, B, A, A, C],  # rel 1,0,1,1,0; R = 4
                [A, A, B, B, C],  # rel 0,0,1,1,0; R = 2
                [A, B, C, A, B],  # rel 0,0,1,0,0; R = 1
                [A, B, C, A, B],  # label absent from the database: R = 0
                [A, -1, -1, -1, -1],  # only one eligible item; R = 1
            ]
        ),
        # eligible database items per class for each query (row sum = eligible size)
        eligible_counts=np.array(
            [[4, 2, 1, 0], [3, 2, 1, 0], [2, 2, 1, 0], [2, 2, 1, 0], [1, 0, 0, 0]]
        ),
    )


def test_map_at_k_divides_by_k(hand_worked):
    # query 0: P@1 = 1, P@3 = 2/3, P@4 = 3/4 -> sum 29/12; query 1: P@3 = 1/3, P@4 = 1/2
    expected_at_5 = [29 / 60, (1 / 3 + 1 / 2) / 5, (1 / 3) / 5, 0.0, 1 / 5]
    np.testing.assert_allclose(map_at_k(hand_worked, 5), expected_at_5, atol=1e-12)
    np.testing.assert_allclose(map_at_k(hand_worked, 3), [(1 + 2 / 3) / 3, 1 / 9, 1 / 9, 0, 1 / 3], atol=1e-12)
    np.testing.assert_allclose(map_at_k(hand_worked, 1), [1, 0, 0, 0, 1], atol=1e-12)


def test_map_trec_divides_by_relevant_in_database(hand_worked):
    expected_at_5 = [29 / 48, (1 / 3 + 1 / 2) / 2, 1 / 3, 0.0, 1.0]
    np.testing.assert_allclose(map_trec_at_k(hand_worked, 5), expected_at_5, atol=1e-12)
    np.testing.assert_allclose(hand_worked.n_relevant, [4, 2, 1, 0, 1])


def test_accuracy_at_k(hand_worked):
    np.testing.assert_array_equal(accuracy_at_k(hand_worked, 1), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(accuracy_at_k(hand_worked, 2), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(accuracy_at_k(hand_worked, 3), [1, 1, 1, 0, 1])


def test_majority_vote_counts_ties_when_true_label_is_a_mode(hand_worked):
    # query 1 top-4 = (A, A, B, B): tie A/B, B is a mode -> 1; top-3 = (A, A, B) -> 0
    # query 2 top-3 = (A, B, C): three-way tie, C among the modes -> 1; top-5 (A,B,C,A,B) -> 0
    # query 4: padding does not vote, its single item is A -> 1
    np.testing.assert_array_equal(majority_vote_at_k(hand_worked, 1), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(majority_vote_at_k(hand_worked, 2), [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(majority_vote_at_k(hand_worked, 3), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(majority_vote_at_k(hand_worked, 4), [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(majority_vote_at_k(hand_worked, 5), [1, 1, 0, 0, 1])


def test_majority_vote_of_an_empty_ranking_is_zero():
    ranked = RankedQueries(np.array([A]), np.array([[-1, -1, -1]]), np.array([[0, 0, 0, 0]]))
    assert majority_vote_at_k(ranked, 3)[0] == 0.0


def test_precision_at_ranks(hand_worked):
    np.testing.assert_allclose(precision_at_ranks(hand_worked, 5)[1], [0, 0, 1 / 3, 1 / 2, 2 / 5])


def _random_ranking(seed: int, n_queries: int = 30, n_database: int = 60, k_max: int = 10):
    """Random vectors, labels (one label only on the query side, so some R_q = 0) and
    patients shared by queries and database, ranked with same-patient exclusion."""
    rng = np.random.default_rng(seed)
    query_labels = rng.choice(["luad", "lusc", "meso", "query-only"], size=n_queries, p=[0.4, 0.3, 0.2, 0.1])
    db_labels = rng.choice(["luad", "lusc", "meso"], size=n_database, p=[0.5, 0.3, 0.2])
    query_patients = rng.integers(0, 25, size=n_queries).astype(str)
    db_patients = rng.integers(0, 25, size=n_database).astype(str)
    indices, _ = rank_database(
        rng.normal(size=(n_queries, 8)), rng.normal(size=(n_database, 8)), k_max, query_patients, db_patients
    )
    return indices, query_labels, query_patients, db_labels, db_patients


def _trec_inputs(indices, query_labels, query_patients, db_labels, db_patients):
    """qrels over every eligible database item (so trec_eval's R equals R_q) and a run with
    strictly decreasing scores (so trec_eval's tie-breaking by doc id never applies)."""
    qrels, run = {}, {}
    for q, ranked in enumerate(indices):
        qrels[f"q{q}"] = {
            f"d{d}": int(db_labels[d] == query_labels[q])
            for d in range(len(db_labels))
            if db_patients[d] != query_patients[q]
        }
        run[f"q{q}"] = {f"d{d}": float(len(ranked) - rank) for rank, d in enumerate(ranked) if d >= 0}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_trec_matches_pytrec_eval_and_ir_measures(seed):
    import ir_measures
    import pytrec_eval

    indices, query_labels, query_patients, db_labels, db_patients = _random_ranking(seed)
    report = evaluate_ranking(
        indices, query_labels, query_patients, db_labels, db_patients, ks=(1, 5, 10), n_bootstrap=0
    )
    qrels, run = _trec_inputs(indices, query_labels, query_patients, db_labels, db_patients)
    assert any(label == "query-only" for label in query_labels)  # R_q = 0 queries are covered

    by_pytrec = pytrec_eval.RelevanceEvaluator(qrels, {"map_cut.1,5,10"}).evaluate(run)
    measures = [ir_measures.AP @ 1, ir_measures.AP @ 5, ir_measures.AP @ 10]
    by_ir_measures = {(m.query_id, str(m.measure)): m.value for m in ir_measures.iter_calc(measures, qrels, run)}
    for k in (1, 5, 10):
        ours = report.per_query[f"mAP_trec@{k}"]
        pytrec_values = [by_pytrec[f"q{q}"][f"map_cut_{k}"] for q in range(len(ours))]
        ir_values = [by_ir_measures[(f"q{q}", f"AP@{k}")] for q in range(len(ours))]
        np.testing.assert_allclose(ours, pytrec_values, atol=1e-6)
        np.testing.assert_allclose(ours, ir_values, atol=1e-6)
        assert report.model.metrics[f"mAP_trec@{k}"] == pytest.approx(np.mean(pytrec_values), abs=1e-6)


def _all_orderings(db_labels: list[int], k: int) -> np.ndarray:
    """Top-k label codes of every permutation of the database: (n!, k)."""
    labels = np.array(db_labels)
    return np.array([labels[list(order)][:k] for order in itertools.permutations(range(len(labels)))])


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("query_label", [A, B, C, D])
def test_chance_closed_forms_equal_the_mean_over_all_orderings(query_label, k):
    db_labels = [A, A, B, B, B, C, A]
    top = _all_orderings(db_labels, k)
    counts = np.bincount(db_labels, minlength=4)[None, :]
    ranked = RankedQueries(np.full(len(top), query_label), top, np.repeat(counts, len(top), axis=0))
    for metric in METRICS.values():
        exact = metric.per_query(ranked, k).mean()
        closed_form = metric.chance(np.array([query_label]), counts, k)[0]
        assert closed_form == pytest.approx(exact, abs=1e-12), metric.name
    expected_precision = chance.expected_precision_at_ranks(np.array([query_label]), counts, k)[0]
    np.testing.assert_allclose(expected_precision, precision_at_ranks(ranked, k).mean(axis=0), atol=1e-12)


def test_chance_with_fewer_eligible_items_than_k_matches_padded_orderings():
    db_labels = [A, B, A]
    top = np.column_stack([_all_orderings(db_labels, 3), np.full((6, 2), -1)])  # padded to K = 5
    counts = np.array([[2, 1, 0, 0]])
    ranked = RankedQueries(np.zeros(6, dtype=np.int64), top, np.repeat(counts, 6, axis=0))
    for metric in METRICS.values():
        exact = metric.per_query(ranked, 5).mean()
        assert metric.chance(np.array([A]), counts, 5)[0] == pytest.approx(exact, abs=1e-12), metric.name


def test_chance_accuracy_by_hand():
    # N = 10 items, R = 2 relevant, K = 3: P(no relevant) = C(8,3)/C(10,3) = 56/120
    value = chance.expected_accuracy_at_k(np.array([A]), np.array([[2, 8]]), 3)[0]
    assert value == pytest.approx(float(1 - Fraction(56, 120)), abs=1e-12)


def test_chance_majority_vote_on_a_larger_database_matches_monte_carlo():
    rng = np.random.default_rng(0)
    counts = np.array([[30, 12, 5, 2]])
    db_labels = np.repeat(np.arange(4), counts[0])
    top = np.array([rng.permutation(db_labels)[:10] for _ in range(20000)])
    ranked = RankedQueries(np.full(len(top), C), top, np.repeat(counts, len(top), axis=0))
    simulated = majority_vote_at_k(ranked, 10).mean()
    exact = chance.expected_majority_vote_at_k(np.array([C]), counts, 10)[0]
    assert exact == pytest.approx(simulated, abs=4 * np.sqrt(simulated * (1 - simulated) / len(top)))
