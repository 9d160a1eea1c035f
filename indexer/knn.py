"""k-nearest-neighbour search with an allowed-id filter and per-query exclusions.

On CPU the filter runs inside faiss (an `IDSelectorBatch` on the kind's search parameters), so
the index itself skips ids that are not allowed. GPU indexes take no selectors: there the search
over-fetches and filters afterwards, fetching more until every row is full or the GPU's k limit
is reached. Exclusions (e.g. the query patient's own items) are dropped from an over-fetch of
k + the number of excluded ids. Whatever path ran, a row still short of k although k ids are
eligible is answered by an exact scan of the eligible vectors, so k results come back whenever
k items match.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np

from threads_search.errors import InputError
from threads_search.indexer.bundle import IndexBundle, sorted_membership
from threads_search.indexer.device import GPU_MAX_K
from threads_search.indexer.id_filter import IdFilter
from threads_search.indexer.validate import prepare_id_set, prepare_k, prepare_vectors

# Filters that leave at most this many ids (or less than the kind's `exact_filter_below`
# fraction) are answered by an exact scan of those vectors (64 MiB at 1024-d, kept with the
# filter): cheaper than a graph walk or list scan that mostly meets filtered-out ids, and exact.
# At 10^6 a 1 % filter (10,000 ids) took 40 ms through IVF with its nprobe scaled up, 3 ms as a
# scan; at 10^5 a 10 % one the same 2.7 ms either way (benchmarks/README.md, "Query path").
EXACT_FILTER_MAX_IDS = 16_384
# Vectors reconstructed and scored at a time by the exact scan (64 MiB at 1024-d).
EXACT_CHUNK_ROWS = 16_384
# Growth of the GPU over-fetch between rounds.
GPU_FETCH_GROWTH = 4


def search(
    index: IndexBundle,
    queries: np.ndarray,
    k: int,
    allowed_ids: "np.ndarray | IdFilter | None" = None,
    exclude_ids: Sequence[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine scores and ids for each query.

    index: a built or loaded index. queries: (q, dim) float, L2-normalised here. k >= 1.
    allowed_ids: (m,) int ids that may be returned (ids not in the index are ignored), or an
        `IdFilter` prepared once for many searches.
    exclude_ids: one array of ids per query that this query must not return.
    Returns scores (q, k) float32, descending, and ids (q, k) int64; a row is padded with
    -inf / -1 only when fewer than k ids are eligible for it.
    """
    queries = prepare_vectors(queries, "queries", dim=index.dim)
    k = prepare_k(k)
    exclusions = _prepare_exclusions(exclude_ids, queries.shape[0])
    id_filter = None
    if allowed_ids is not None:
        id_filter = allowed_ids if isinstance(allowed_ids, IdFilter) else IdFilter(allowed_ids)
    allowed = None if id_filter is None else id_filter.within(index)
    n_candidates = index.count if allowed is None else allowed.size
    largest_exclusion = max((e.size for e in exclusions), default=0) if exclusions else 0
    fetch = min(k + largest_exclusion, n_candidates)
    if fetch == 0:
        empty = np.empty((queries.shape[0], 0))
        return _padded(empty, empty, k)

    with _threads_for(queries.shape[0]):
        first = _first_pass(index, queries, fetch, allowed, id_filter)
    scores, ids = _drop_excluded(*first, exclusions, k)
    needed = _eligible_counts(index, allowed, exclusions, k)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < needed)
    if short.size:
        candidates = index.sorted_ids() if allowed is None else allowed
        row_exclusions = [exclusions[row] for row in short] if exclusions else None
        refill = exact_search(index, queries[short], candidates, fetch)
        scores[short], ids[short] = _drop_excluded(*refill, row_exclusions, k)
    return scores, ids


@contextlib.contextmanager
def _threads_for(n_queries: int) -> Iterator[None]:
    """One OpenMP thread for a single query: faiss parallelises over queries, and a team of
    threads waiting on a busy core cost 2-40 ms per query here against 0.1-0.3 ms on one."""
    if n_queries > 1:
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _first_pass(
    index: IndexBundle, queries: np.ndarray, fetch: int, allowed: np.ndarray | None, id_filter: IdFilter | None
) -> tuple[np.ndarray, np.ndarray]:
    """(q, fetch) scores and ids from the path that suits the filter and the device."""
    tight_filter = allowed is not None and (
        allowed.size <= EXACT_FILTER_MAX_IDS
        or allowed.size < index.spec.exact_filter_below * index.count
    )
    if tight_filter:
        return exact_search(index, queries, allowed, fetch, id_filter)
    if index.gpu_index is not None:
        return _gpu_search(index, queries, fetch, allowed)
    return _cpu_search(index, queries, fetch, allowed, id_filter)


def _cpu_search(
    index: IndexBundle, queries: np.ndarray, fetch: int, allowed: np.ndarray | None, id_filter: IdFilter | None
) -> tuple[np.ndarray, np.ndarray]:
    """faiss search with the allowed ids as an in-index selector; (q, fetch) scores and ids."""
    selector = id_filter.selector() if id_filter is not None else None
    fraction = 1.0 if allowed is None else allowed.size / index.count
    params = _search_knobs(index, fraction)
    faiss_params = index.spec.search_parameters(params, index.index, selector)
    return index.index.search(queries, fetch, params=faiss_params)


def _search_knobs(index: IndexBundle, fraction: float) -> dict:
    """The index's tuned search parameters, with the knob scaled up for a filter.

    A filter keeping `fraction` of the ids leaves ~fraction of the visited candidates (HNSW) or
    list entries (IVF) usable, so efSearch / nprobe grow by 1/fraction, up to the most
    thorough value tuning considers.
    """
    params = index.search_params
    knob = index.spec.tuning_knob
    if knob is None or fraction >= 1.0:
        return params
    ceiling = max(index.spec.tuning_ladder(index.sidecar["build_params"]))
    params[knob] = max(params[knob], min(ceiling, math.ceil(params[knob] / fraction)))
    return params


def _gpu_search(
    index: IndexBundle, queries: np.ndarray, fetch: int, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Search the GPU replica, over-fetching and post-filtering by `allowed`.

    Starts at `fetch` / (fraction of ids allowed) and grows until every row holds `fetch`
    allowed ids or the fetch reaches the index size or the GPU k limit.
    """
    ceiling = min(index.count, GPU_MAX_K)
    size = fetch if allowed is None else math.ceil(fetch * index.count / allowed.size)
    while True:
        size = min(size, ceiling)
        scores, ids = index.gpu_index.search(queries, size)
        if allowed is not None:
            scores, ids = _keep(scores, ids, sorted_membership(ids, allowed))
        if size >= ceiling or (ids >= 0).sum(axis=1).min() >= fetch:
            return scores, ids
        size *= GPU_FETCH_GROWTH


def exact_search(
    index: IndexBundle, queries: np.ndarray, candidate_ids: np.ndarray, fetch: int,
    id_filter: IdFilter | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`fetch` of `queries` (q, d) among `candidate_ids`, from the stored vectors.

    Vectors are reconstructed from the CPU index in chunks (no copy of the whole collection).
    When the candidates are a tight filter's (`id_filter`, at most one chunk: 64 MiB at 1024-d),
    their vectors are reconstructed once and kept with the filter, so a filter reused across
    queries (an atlas keeps its recent filters per generation, within a byte budget) scans a
    ready matrix: gathering 1,000 random rows of a 10^5 x 1024 HNSW index cost more than scoring
    them, and 10,000 rows of a 10^6 IVF index 40 ms.
    Returns (q, fetch) float32 scores, descending, and int64 ids, padded when needed.
    """
    import faiss

    if id_filter is not None and candidate_ids.size <= EXACT_CHUNK_ROWS:
        vectors = id_filter.for_index(index, "vectors", lambda: index.index.reconstruct_batch(candidate_ids))
        scores, positions = faiss.knn(queries, vectors, min(fetch, candidate_ids.size),
                                      metric=faiss.METRIC_INNER_PRODUCT)
        return _padded(scores, candidate_ids[positions], fetch)

    best_scores = np.empty((queries.shape[0], 0), dtype=np.float32)
    best_ids = np.empty((queries.shape[0], 0), dtype=np.int64)
    for start in range(0, candidate_ids.size, EXACT_CHUNK_ROWS):
        chunk_ids = candidate_ids[start : start + EXACT_CHUNK_ROWS]
        # faiss's brute-force kNN: SIMD loops on the calling thread for a few queries (no BLAS
        # thread team to wake, which cost 1-5 ms per query on a busy machine), BLAS for many.
        chunk_scores, positions = faiss.knn(
            queries, index.index.reconstruct_batch(chunk_ids), min(fetch, chunk_ids.size),
            metric=faiss.METRIC_INNER_PRODUCT,
        )
        scores = np.concatenate([best_scores, chunk_scores], axis=1)
        ids = np.concatenate([best_ids, chunk_ids[positions]], axis=1)
        if scores.shape[1] > fetch:
            top = np.argpartition(-scores, fetch - 1, axis=1)[:, :fetch]
            scores = np.take_along_axis(scores, top, axis=1)
            ids = np.take_along_axis(ids, top, axis=1)
        best_scores, best_ids = scores, ids
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return _padded(
        np.take_along_axis(best_scores, order, axis=1),
        np.take_along_axis(best_ids, order, axis=1),
        fetch,
    )


def _drop_excluded(
    scores: np.ndarray, ids: np.ndarray, exclusions: list[np.ndarray] | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's excluded ids (and faiss's -1 slots); (q, k) scores and ids."""
    keep = ids >= 0
    if exclusions:
        for row, excluded in enumerate(exclusions):
            if excluded.size:
                keep[row] &= ~sorted_membership(ids[row], excluded)
    scores, ids = _keep(scores, ids, keep)
    return _padded(scores[:, :k], ids[:, :k], k)


# Up to this many query rows are compacted row by row (boolean indexing); more go through one
# stable argsort of the whole block. For the single query of an interactive search the row path
# costs a few microseconds against ~40 for the sort and its take_along_axis calls.
ROW_BY_ROW_MAX = 8


def _keep(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move the kept entries of each row to its front, in order; the rest become -inf / -1."""
    if scores.shape[0] <= ROW_BY_ROW_MAX:
        kept_scores = np.full(scores.shape, -np.inf, dtype=np.float32)
        kept_ids = np.full(ids.shape, -1, dtype=np.int64)
        for row in range(scores.shape[0]):
            row_scores = scores[row][keep[row]]
            kept_scores[row, : row_scores.size] = row_scores
            kept_ids[row, : row_scores.size] = ids[row][keep[row]]
        return kept_scores, kept_ids
    order = np.argsort(~keep, axis=1, kind="stable")
    kept = np.take_along_axis(keep, order, axis=1)
    scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
    ids = np.where(kept, np.take_along_axis(ids, order, axis=1), -1).astype(np.int64)
    return scores, ids


def _padded(scores: np.ndarray, ids: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows widened to `width` columns with -inf scores and -1 ids."""
    missing = width - scores.shape[1]
    if missing <= 0:
        return np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(ids, np.int64)
    rows = scores.shape[0]
    return (
        np.hstack([scores, np.full((rows, missing), -np.inf)]).astype(np.float32),
        np.hstack([ids, np.full((rows, missing), -1)]).astype(np.int64),
    )


def _eligible_counts(
    index: IndexBundle, allowed: np.ndarray | None, exclusions: list[np.ndarray] | None, k: int
) -> np.ndarray:
    """(q,) results each row must hold: min(k, ids allowed and not excluded for that row)."""
    n_candidates = index.count if allowed is None else allowed.size
    if not exclusions:
        return np.array([min(k, n_candidates)])
    counts = []
    for excluded in exclusions:
        if allowed is None:
            excluded_candidates = int(index.holds(excluded).sum())
        else:
            excluded_candidates = int(sorted_membership(excluded, allowed).sum())
        counts.append(min(k, n_candidates - excluded_candidates))
    return np.array(counts)


def _prepare_exclusions(
    exclude_ids: Sequence[np.ndarray | None] | None, n_queries: int
) -> list[np.ndarray] | None:
    """One sorted distinct int64 array per query, or None when nothing is excluded."""
    if exclude_ids is None:
        return None
    if isinstance(exclude_ids, np.ndarray) and exclude_ids.dtype != object:
        raise InputError(
            "exclude_ids must hold one array per query; to filter every query use allowed_ids"
        )
    if len(exclude_ids) != n_queries:
        raise InputError(
            f"exclude_ids has {len(exclude_ids)} entries but there are {n_queries} queries"
        )
    return [
        prepare_id_set(np.empty(0, np.int64) if ids is None else ids, f"exclude_ids[{row}]")
        for row, ids in enumerate(exclude_ids)
    ]
