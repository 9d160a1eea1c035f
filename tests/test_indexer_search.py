"""Search: exact results, allowed-id filters, per-query exclusions, the GPU over-fetch path."""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest

import threads_search.indexer.knn as knn_module
from threads_search.errors import InputError, ModelMismatchError
from threads_search.indexer import KINDS, build_index, list_kinds, search
from threads_search.indexer.synthetic import clustered_unit_vectors

N, DIM, K = 5000, 48, 10


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def data():
    vectors = clustered_unit_vectors(N, DIM, seed=8)
    ids = np.random.default_rng(9).choice(10**12, size=N, replace=False).astype(np.int64)
    queries = clustered_unit_vectors(40, DIM, seed=8)  # same clusters, fresh points
    return vectors, ids, queries


@pytest.fixture(scope="module")
def built(data):
    vectors, ids, _ = data
    return {kind: build_index(vectors, ids, kind=kind, seed=1) for kind in list_kinds()}


def reference(queries, vectors, ids, k, keep=None):
    """numpy brute force: (scores, ids) of the top-k among rows where `keep` is true."""
    keep = np.ones(len(ids), bool) if keep is None else keep
    scores = queries @ vectors[keep].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[keep][order]


def test_flat_search_equals_numpy_brute_force():
    rng = np.random.default_rng(10)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(2000).astype(np.int64) * 13 + 5
    queries = rng.standard_normal((25, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, found = search(build_index(vectors, ids, kind="flat"), queries, 15)
    expected_scores, expected_ids = reference(queries, vectors, ids, 15)
    np.testing.assert_array_equal(found, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    assert scores.dtype == np.float32 and found.dtype == np.int64


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01])
def test_filtered_search_returns_k_allowed_ids(built, data, kind, fraction):
    vectors, ids, queries = data
    keep = np.random.default_rng(11).random(N) < fraction
    allowed = ids[keep]
    scores, found = search(built[kind], queries, K, allowed_ids=allowed)
    assert np.isin(found, allowed).all()  # k of them, never a padded slot
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    expected_scores, expected_ids = reference(queries, vectors, ids, K, keep)
    recall = (found[:, :, None] == expected_ids[:, None, :]).any(axis=2).mean()
    # Tight filters (1%) take the exact path on every kind; wider ones the approximate one.
    assert recall >= (1.0 if kind == "flat" or fraction == 0.01 else 0.85)
    if kind == "flat":
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_selector_search_under_a_tight_filter_still_returns_k(built, data, kind, monkeypatch):
    vectors, ids, queries = data
    # Force the in-index selector path, which the exact shortcut would take over here.
    monkeypatch.setattr(knn_module, "EXACT_FILTER_MAX_IDS", 0)
    monkeypatch.setitem(KINDS, kind, replace(KINDS[kind], exact_filter_below=0.0))
    refilled_rows = []
    original = knn_module.exact_search
    monkeypatch.setattr(
        knn_module,
        "exact_search",
        lambda *args: refilled_rows.append(args[1].shape[0]) or original(*args),
    )
    keep = np.zeros(N, bool)
    keep[np.random.default_rng(12).choice(N, 30, replace=False)] = True  # 0.6% of the ids
    _, found = search(built[kind], queries, K, allowed_ids=ids[keep])
    assert np.isin(found, ids[keep]).all()
    _, expected_ids = reference(queries, vectors, ids, K, keep)
    recall = (found[:, :, None] == expected_ids[:, None, :]).any(axis=2).mean()
    if kind == "hnsw":
        # The graph walk leaves rows short; those rows are answered by the exact scan.
        assert sum(refilled_rows) > 0 and recall >= 0.7
    else:
        # nprobe grows by 1/fraction up to every list: the IVF scan itself is exhaustive.
        assert refilled_rows == [] and recall == 1.0


def test_fewer_matches_than_k_are_padded(built, data):
    vectors, ids, queries = data
    allowed = np.r_[ids[[3, 30, 300]], 987654321987]  # the last id is not in the index
    scores, found = search(built["hnsw"], queries[:2], K, allowed_ids=allowed)
    expected_scores, expected_ids = reference(queries[:2], vectors, ids, 3, np.isin(ids, allowed))
    np.testing.assert_array_equal(found[:, :3], expected_ids)
    np.testing.assert_allclose(scores[:, :3], expected_scores, atol=1e-5)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    empty_scores, empty_ids = search(built["flat"], queries[:2], 4, allowed_ids=[])
    assert (empty_ids == -1).all() and np.isneginf(empty_scores).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_per_query_exclusion_drops_ids_and_still_returns_k(built, data, kind):
    vectors, ids, queries = data
    _, nearest = reference(queries, vectors, ids, 25)
    # Each query excludes a different number of its own nearest ids (0 to 24).
    exclusions = [nearest[row, : row % 25] for row in range(len(queries))]
    _, found = search(built[kind], queries, K, exclude_ids=exclusions)
    for row, excluded in enumerate(exclusions):
        assert not np.isin(found[row], excluded).any()
        assert (found[row] >= 0).all()
    if kind == "flat":
        expected = np.stack([nearest[row, row % 25 : row % 25 + K] for row in range(15)])
        np.testing.assert_array_equal(found[:15], expected)


def test_exclusion_and_filter_combine(built, data):
    vectors, ids, queries = data
    keep = np.random.default_rng(13).random(N) < 0.3
    _, allowed_nearest = reference(queries, vectors, ids, 5, keep)
    exclusions = [allowed_nearest[row, :2] for row in range(len(queries))]
    _, found = search(built["flat"], queries, K, allowed_ids=ids[keep], exclude_ids=exclusions)
    _, expected = reference(queries, vectors, ids, K + 2, keep)
    np.testing.assert_array_equal(found, expected[:, 2:])


def test_exclusions_leaving_fewer_than_k_pad_the_row(built, data):
    vectors, ids, queries = data
    allowed = ids[:12]
    _, found = search(built["ivf"], queries[:1], K, allowed_ids=allowed, exclude_ids=[ids[:5]])
    assert sorted(found[0, :7]) == sorted(ids[5:12]) and (found[0, 7:] == -1).all()


def test_gpu_overfetch_post_filter_path(built, data, monkeypatch):
    """The GPU branch (no selectors: over-fetch, post-filter, grow) run on a CPU stand-in."""
    vectors, ids, queries = data
    flat = built["flat"]
    monkeypatch.setattr(knn_module, "EXACT_FILTER_MAX_IDS", 0)
    monkeypatch.setattr(knn_module, "GPU_MAX_K", 64)  # small cap: growth, then refill
    flat.gpu_index = flat.index  # selector-free search on the same vectors
    try:
        for fraction in (0.5, 0.05, 0.01):
            keep = np.random.default_rng(14).random(N) < fraction
            scores, found = search(flat, queries, K, allowed_ids=ids[keep])
            expected_scores, expected_ids = reference(queries, vectors, ids, K, keep)
            np.testing.assert_array_equal(found, expected_ids)
            np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    finally:
        flat.gpu_index = None


def test_search_input_errors(built, data):
    _, ids, queries = data
    with pytest.raises(ModelMismatchError, match="dimension 10 but the index holds 48-d"):
        search(built["flat"], np.ones((2, 10), np.float32), K)
    with pytest.raises(InputError, match="k must be a positive integer"):
        search(built["flat"], queries, 0)
    with pytest.raises(InputError, match="queries row 1 contains NaN"):
        search(built["flat"], np.where(np.arange(3)[:, None] == 1, np.nan, queries[:3]), K)
    with pytest.raises(InputError, match="2 entries but there are 3 queries"):
        search(built["flat"], queries[:3], K, exclude_ids=[ids[:1], ids[:2]])
    with pytest.raises(InputError, match="one array per query"):
        search(built["flat"], queries[:3], K, exclude_ids=ids[:3])
    with pytest.raises(InputError, match="allowed_ids must be integers"):
        search(built["flat"], queries[:3], K, allowed_ids=np.array([0.5]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_tight_filter_reused_across_queries_answers_like_a_fresh_one(built, data, kind):
    """The exact scan keeps a tight filter's vectors with the filter: its second and later
    searches must return what a filter made for that one query returns."""
    from threads_search.indexer.id_filter import IdFilter

    vectors, ids, queries = data
    keep = np.arange(N) % 17 == 3  # ~300 ids: the exact-scan path
    reused = IdFilter(ids[keep])
    for row in range(queries.shape[0]):
        scores, found = search(built[kind], queries[row:row + 1], K, allowed_ids=reused)
        fresh_scores, fresh = search(built[kind], queries[row:row + 1], K, allowed_ids=IdFilter(ids[keep]))
        np.testing.assert_array_equal(found, fresh)
        np.testing.assert_array_equal(scores, fresh_scores)
    assert reused.for_index(built[kind], "vectors", lambda: None).shape == (keep.sum(), DIM)
    if kind == "flat":  # flat stores the vectors exactly: equal to brute force
        _, expected = reference(queries[-1:], vectors, ids, K, keep)
        np.testing.assert_array_equal(found, expected)
