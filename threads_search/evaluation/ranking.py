"""Exact inner-product ranking of a database for evaluation, with same-patient exclusion.

FAISS answers production queries; evaluation ranks exactly with numpy so that metrics never
depend on an approximate index, and so that ties are broken the same way on every machine
(by database order, like a stable sort).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from threads_search.errors import InputError
from threads_search.evaluation._inputs import as_keys, as_vectors, encode_shared

# Scores of one query chunk are held as (chunk, n_database) float64; 2**24 values = 128 MiB.
_MAX_SCORES_PER_CHUNK = 2**24


def rank_database(
    query_vectors: Any,
    db_vectors: Any,
    k: int,
    query_groups: Any | None,
    db_groups: Any | None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank database rows for every query by inner product, best first.

    query_vectors: (q, d) float; db_vectors: (n, d) float (L2-normalise both for cosine).
    query_groups, db_groups: patient ids, (q,) and (n,); database rows whose group equals the
        query's are never returned. Pass None for both only when queries and database share
        no patients (no exclusion is then done).
    Returns (indices (q, k) int64 database rows, scores (q, k) float64 inner products). Rows
    are padded with index -1 and score -inf when fewer than k database items are eligible.
    Equal scores keep database order.
    """
    queries = as_vectors(query_vectors, "query_vectors")
    database = as_vectors(db_vectors, "db_vectors")
    if queries.shape[1] != database.shape[1]:
        raise InputError(
            f"query_vectors has dimension {queries.shape[1]} but db_vectors has {database.shape[1]}"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: {k!r} is not a positive integer")
    query_codes, db_codes = _group_codes(query_groups, db_groups, len(queries), len(database))
    if chunk_size is None:
        chunk_size = max(1, _MAX_SCORES_PER_CHUNK // len(database))

    indices = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float64)
    for start in range(0, len(queries), chunk_size):
        stop = min(start + chunk_size, len(queries))
        # float64 products of the (float32) embeddings are exact to ~1e-16, so the order does
        # not depend on BLAS blocking or thread count.
        chunk_scores = queries[start:stop] @ database.T
        eligible = np.ones(chunk_scores.shape, dtype=bool)
        if query_codes is not None:
            eligible = query_codes[start:stop, None] != db_codes[None, :]
        chunk_indices, chunk_top = _top_k_stable(np.where(eligible, chunk_scores, -np.inf), k)
        # Excluded items carry -inf and sort last; cut them (and any shortfall) to padding.
        n_eligible = eligible.sum(axis=1)
        keep = np.arange(chunk_indices.shape[1])[None, :] < n_eligible[:, None]
        width = chunk_indices.shape[1]
        indices[start:stop, :width] = np.where(keep, chunk_indices, -1)
        scores[start:stop, :width] = np.where(keep, chunk_top, -np.inf)
    return indices, scores


def _group_codes(
    query_groups: Any | None, db_groups: Any | None, n_queries: int, n_database: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Shared integer codes for the two group arrays, or (None, None) for no exclusion."""
    if query_groups is None and db_groups is None:
        return None, None
    if query_groups is None or db_groups is None:
        raise InputError("query_groups and db_groups: give both patient-id arrays or neither")
    query_keys = as_keys(query_groups, n_queries, "query_groups")
    db_keys = as_keys(db_groups, n_database, "db_groups")
    query_codes, db_codes, _ = encode_shared(query_keys, db_keys)
    return query_codes, db_codes


def _top_k_stable(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of `scores` (m, n), ties resolved by lower column.

    argpartition alone picks an arbitrary subset of the items tied at the k-th score. Here
    every column scoring at least the k-th best is selected; in the rare rows where ties make
    that more than k, the tied columns of lowest index fill the places left. The k survivors
    are then stably sorted by score.
    Returns (columns (m, min(k, n)) int64, scores (m, min(k, n)) float64).
    """
    n_rows, n_columns = scores.shape
    k = min(k, n_columns)
    if k < n_columns:
        kth_best = np.partition(scores, n_columns - k, axis=1)[:, n_columns - k, None]
        selected = scores >= kth_best
        overfull = np.flatnonzero(selected.sum(axis=1) > k)
        if overfull.size:
            rows, threshold = scores[overfull], kth_best[overfull]
            tied = rows == threshold
            places_left = k - (rows > threshold).sum(axis=1, keepdims=True)
            first_tied = tied & (np.cumsum(tied, axis=1) <= places_left)
            selected[overfull] = (rows > threshold) | first_tied
        columns = np.nonzero(selected)[1].reshape(n_rows, k)
    else:
        columns = np.broadcast_to(np.arange(n_columns), (n_rows, n_columns))
    candidate_scores = np.take_along_axis(scores, columns, axis=1)
    order = np.argsort(-candidate_scores, axis=1, kind="stable")
    best_columns = np.take_along_axis(columns, order, axis=1).astype(np.int64)
    return best_columns, np.take_along_axis(candidate_scores, order, axis=1)
