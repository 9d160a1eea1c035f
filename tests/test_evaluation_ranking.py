"""Exact ranking for evaluation: order, deterministic ties, same-patient exclusion, padding."""

from __future__ import annotations

import numpy as np
import pytest

from threads_search.errors import InputError
from threads_search.evaluation.ranking import rank_database


def _reference_ranking(queries, database, k, query_groups, db_groups):
    """Brute force: full stable sort of every query's eligible items."""
    indices = np.full((len(queries), k), -1)
    for q, query in enumerate(queries):
        scores = database @ query
        eligible = np.flatnonzero(db_groups != query_groups[q])
        order = eligible[np.argsort(-scores[eligible], kind="stable")][:k]
        indices[q, : len(order)] = order
    return indices


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_matches_brute_force_stable_sort(chunk_size):
    rng = np.random.default_rng(0)
    # Rounded vectors make many exact ties, so tie-breaking is exercised too.
    queries = np.round(rng.normal(size=(23, 4)))
    database = np.round(rng.normal(size=(40, 4)))
    query_groups = rng.integers(0, 10, size=23)
    db_groups = rng.integers(0, 10, size=40)
    indices, scores = rank_database(queries, database, 12, query_groups, db_groups, chunk_size=chunk_size)
    np.testing.assert_array_equal(indices, _reference_ranking(queries, database, 12, query_groups, db_groups))
    ranked_vectors = database[np.maximum(indices, 0)]
    expected_scores = np.where(indices >= 0, np.einsum("qd,qkd->qk", queries, ranked_vectors), -np.inf)
    np.testing.assert_allclose(scores, expected_scores)
    assert indices.dtype == np.int64


def test_ties_keep_database_order():
    database = np.ones((6, 3))
    indices, scores = rank_database(np.ones((1, 3)), database, 4, ["p9"], ["p0", "p1", "p2", "p3", "p4", "p5"])
    np.testing.assert_array_equal(indices, [[0, 1, 2, 3]])
    np.testing.assert_allclose(scores, [[3.0] * 4])


def test_own_patient_is_never_returned_even_when_it_is_the_best_match():
    rng = np.random.default_rng(1)
    database = rng.normal(size=(30, 8))
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    db_patients = np.repeat([f"patient{i}" for i in range(10)], 3)
    queries = database[::3] + 1e-3  # each query is a near copy of its own patient's first item
    query_patients = db_patients[::3]

    without_groups, _ = rank_database(queries, database, 1, None, None)
    np.testing.assert_array_equal(without_groups[:, 0], np.arange(0, 30, 3))
    indices, _ = rank_database(queries, database, 5, query_patients, db_patients)
    assert (db_patients[indices] != query_patients[:, None]).all()


def test_pads_with_minus_one_when_too_few_items_are_eligible():
    database = np.eye(3)
    indices, scores = rank_database([[1.0, 0.0, 0.0]], database, 3, ["a"], ["a", "b", "a"])
    np.testing.assert_array_equal(indices, [[1, -1, -1]])
    assert scores[0, 0] == 0.0 and np.isneginf(scores[0, 1:]).all()
    # k larger than the whole database pads too
    indices, _ = rank_database([[1.0, 0.0, 0.0]], database, 5, ["z"], ["a", "b", "c"])
    np.testing.assert_array_equal(indices, [[0, 1, 2, -1, -1]])


def test_bad_input_is_refused_with_one_line():
    with pytest.raises(InputError, match="dimension 3 but db_vectors has 2"):
        rank_database(np.ones((2, 3)), np.ones((4, 2)), 1, None, None)
    with pytest.raises(InputError, match="row 1 contains NaN"):
        rank_database(np.ones((2, 2)), [[1, 0], [np.nan, 1]], 1, None, None)
    with pytest.raises(InputError, match="query_vectors: is empty"):
        rank_database(np.ones((0, 2)), np.ones((4, 2)), 1, None, None)
    with pytest.raises(InputError, match="give both"):
        rank_database(np.ones((1, 2)), np.ones((4, 2)), 1, ["a"], None)
    with pytest.raises(InputError, match="db_groups: has 3 entries but there are 4 vectors"):
        rank_database(np.ones((1, 2)), np.ones((4, 2)), 1, ["a"], ["a", "b", "c"])
