"""Recall measured at build time, and the search knob tuned to reach a target recall.

recall@k = mean over queries of |approximate top-k ids ∩ exact top-k ids| / k, the exact top-k
coming from a brute-force inner-product scan. The queries are a seeded sample of the database
vectors held out of the index while it is tuned (they are added right after), so they are
unseen, as real queries are. Stored vectors make flattering queries: on 10^5 x 1024-d clustered
vectors HNSW (efSearch 16) found 0.96 of a stored vector's other neighbours but 0.90 of an
unseen vector's, since the graph links every stored vector to its own neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from threads_search.indexer.kinds import IndexKindSpec

RECALL_K = 10
RECALL_QUERIES = 1000
DEFAULT_TARGET_RECALL = 0.95
# Database rows copied and scored per block of the exact scan (64 MiB at 1024-d).
EXACT_BLOCK_ROWS = 16_384


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


def held_out_rows(n: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded sample of min(RECALL_QUERIES, n // 10) vectors (1 if n < 20).

    At most a tenth of the collection is held out, so the tuned index is nearly the final one.
    """
    size = min(RECALL_QUERIES, max(n // 10, 1 if n > 1 else 0))
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def exact_top_ids(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int, rows: np.ndarray
) -> np.ndarray:
    """(q, k) ids of the exact inner-product top-k of `queries` among `vectors[rows]`.

    `rows` is a boolean mask over `vectors` (n, d); blocks of it are scanned in turn, so no
    copy of the whole collection is made.
    """
    best_scores = np.empty((queries.shape[0], 0), dtype=np.float32)
    best_ids = np.empty((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, vectors.shape[0], EXACT_BLOCK_ROWS):
        keep = np.flatnonzero(rows[start : start + EXACT_BLOCK_ROWS]) + start
        if keep.size == 0:
            continue
        scores, block_rows = faiss.knn(
            queries, vectors[keep], min(k, keep.size), metric=faiss.METRIC_INNER_PRODUCT
        )
        best_scores = np.hstack([best_scores, scores])
        best_ids = np.hstack([best_ids, ids[keep][block_rows]])
        order = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
    return best_ids


def tune_search_params(
    index: faiss.Index,
    spec: IndexKindSpec,
    build_params: dict,
    queries: np.ndarray,
    true_ids: np.ndarray,
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> TunedSearch:
    """Raise the kind's search knob along its ladder until recall reaches `target_recall`.

    `queries` (q, d) are vectors `index` does not hold; `true_ids` (q, k) their exact top-k in
    it. The cheapest setting that meets the target is kept; if none does, the last (most
    thorough) one is, and its recall is what gets recorded, so a sidecar never claims more
    than was measured. With nothing to measure (k = 0) recall is 1.
    """
    k = true_ids.shape[1]
    defaults = spec.default_search_params(build_params)
    if k == 0 or queries.shape[0] == 0:
        return TunedSearch(defaults, 1.0, k, int(queries.shape[0]), [])
    trials = []
    for value in spec.tuning_ladder(build_params) or (None,):
        params = dict(defaults) if value is None else {**defaults, spec.tuning_knob: value}
        faiss_params = spec.search_parameters(params, index, None)
        _, found = index.search(queries, k, params=faiss_params)
        recall = recall_at_k(found, true_ids)
        trials.append({**params, "recall": round(recall, 4)})
        if recall >= target_recall:
            break
    return TunedSearch(params, recall, k, int(queries.shape[0]), trials)


class StreamingTopK:
    """Exact inner-product top-k of fixed queries over a database seen in chunks.

    queries: (q, d) float32. `update(ids, vectors)` scores one chunk (c, d); `result()` gives
    (q, k) scores (descending) and ids, -inf / -1 where fewer than k vectors were seen. Ties
    keep the earlier-seen id. Memory: the queries and (q, 2k) candidates, whatever the size
    of the database.
    """

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self.scores = np.full((self.queries.shape[0], 0), -np.inf, dtype=np.float32)
        self.ids = np.full((self.queries.shape[0], 0), -1, dtype=np.int64)

    def update(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if ids.size == 0 or self.queries.shape[0] == 0:
            return
        scores, rows = faiss.knn(self.queries, np.ascontiguousarray(vectors, dtype=np.float32),
                                 min(self.k, ids.size), metric=faiss.METRIC_INNER_PRODUCT)
        merged_scores = np.hstack([self.scores, scores])
        merged_ids = np.hstack([self.ids, np.asarray(ids, dtype=np.int64)[rows]])
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(merged_scores, order, axis=1)
        self.ids = np.take_along_axis(merged_ids, order, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        missing = self.k - self.scores.shape[1]
        if missing <= 0:
            return self.scores, self.ids
        rows = self.queries.shape[0]
        return (np.hstack([self.scores, np.full((rows, missing), -np.inf, np.float32)]),
                np.hstack([self.ids, np.full((rows, missing), -1, np.int64)]))
