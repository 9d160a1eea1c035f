"""Recall measured at build time, and the search knob tuned to reach a target recall.

recall@k = mean over queries of |approximate top-k ids ∩ exact top-k ids| / k, where the exact
top-k is a brute-force inner-product scan of every vector. The queries are a seeded sample of
the indexed vectors, each with its own id left out of both lists: a stored vector finds itself
almost for free, and counting that match overstated HNSW recall on fresh queries (0.965 vs
0.903 at 10^5 x 1024-d, benchmarks/results/index.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from threads_search.indexer.kinds import IndexKindSpec

RECALL_K = 10
RECALL_QUERIES = 1000
DEFAULT_TARGET_RECALL = 0.95


@dataclass(frozen=True)
class TunedSearch:
    """Outcome of tuning: the chosen search parameters, their recall and every trial."""

    search_params: dict
    recall: float
    k: int
    n_queries: int
    trials: list[dict]


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean fraction of each row of `true_ids` (q, k) present in the same row of `found_ids`."""
    hits = (found_ids[:, :, None] == true_ids[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / true_ids.shape[1])


def sample_query_rows(n: int, seed: int, size: int = RECALL_QUERIES) -> np.ndarray:
    """Sorted row indices of a seeded sample of min(n, size) database vectors."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def exact_top_ids(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """(q, k) int64 ids of the exact inner-product top-k of `queries` (q, d) in `vectors` (n, d)."""
    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids[rows]


def without_own_id(found_ids: np.ndarray, own_ids: np.ndarray, k: int) -> np.ndarray:
    """(q, k): each row of `found_ids` (q, k + 1) without that query's own id, in order.

    A row that does not contain its own id (a duplicate vector took its place) loses its last
    entry instead.
    """
    keep = found_ids != own_ids[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(found_ids, order, axis=1)[:, :k]


def tune_search_params(
    index: faiss.Index,
    spec: IndexKindSpec,
    build_params: dict,
    vectors: np.ndarray,
    ids: np.ndarray,
    seed: int,
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> TunedSearch:
    """Raise the kind's search knob along its ladder until recall@10 reaches `target_recall`.

    `vectors` (n, d) float32 and `ids` (n,) are what `index` holds. The cheapest setting that
    meets the target is kept; if none does, the last (most thorough) one is, and its recall is
    what gets recorded, so a sidecar never claims more than was measured. With a single
    vector there is no neighbour to find: recall is 1 with k = 0.
    """
    rows = sample_query_rows(vectors.shape[0], seed)
    queries, own_ids = vectors[rows], ids[rows]
    k = min(RECALL_K, vectors.shape[0] - 1)
    defaults = spec.default_search_params(build_params)
    if k == 0:
        return TunedSearch(defaults, 1.0, 0, int(queries.shape[0]), [])
    true_ids = without_own_id(exact_top_ids(queries, vectors, ids, k + 1), own_ids, k)
    ladder = spec.tuning_ladder(build_params) or (None,)
    trials = []
    for value in ladder:
        params = dict(defaults) if value is None else {**defaults, spec.tuning_knob: value}
        faiss_params = spec.search_parameters(params, index, None)
        _, found = index.search(queries, k + 1, params=faiss_params)
        recall = recall_at_k(without_own_id(found, own_ids, k), true_ids)
        trials.append({**params, "recall": round(recall, 4)})
        if recall >= target_recall:
            break
    return TunedSearch(params, recall, k, int(queries.shape[0]), trials)
