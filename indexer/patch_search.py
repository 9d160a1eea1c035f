"""k-nearest patches: slide filters and exclusions by patch-id ranges, re-ranking from the files.

A filter names slides (vids). Since a slide's patches are one contiguous id range
(`patch_ids.slide_id_range`), the search turns it into the cheapest faiss selector that runs
inside the index:
- a few slides (the query patient's, typically) -> id ranges, negated for an exclusion;
- otherwise the ids of the smaller side (eligible, or not eligible and negated) in an
  `IDSelectorBatch`, up to SELECTOR_MAX_IDS of them;
- a filter too large for either (millions of ids on both sides) post-filters an over-fetch.
A filter leaving at most EXACT_MAX_IDS patches is answered exactly from the feature files.
nprobe grows with the share of patches filtered out, as for the slide index.

Compressed kinds (`spec.rerank`) fetch `k * k_factor` candidates from their codes and re-score
them with the exact features from a `VectorSource`; candidates it cannot read (a feature file
that changed since the build) are dropped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from threads_search.indexer.patch_ids import ROW_BITS
from threads_search.indexer.patch_index import PatchIndex
from threads_search.indexer.validate import prepare_k, prepare_vectors

EXACT_MAX_IDS = 16_384
SELECTOR_MAX_IDS = 1 << 21
RANGE_SELECTOR_MAX_SLIDES = 8
# Queries re-scored together (their candidates' vectors are gathered at once).
RERANK_BLOCK_QUERIES = 16
# Largest over-fetch of a post-filtered search (faiss keeps a heap of that size per query).
MAX_FETCH = 65_536


class VectorSource(Protocol):
    """Exact vectors of patches, e.g. read from their feature files."""

    def vectors(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, d) float32 L2-normalised rows for `ids` (n,) int64, and (n,) bool: which rows
        could be read (the others are garbage)."""
        ...


@dataclass
class PatchHits:
    """scores (q, k) float32 descending and ids (q, k) int64, -inf / -1 padding; `unreadable`
    counts candidates dropped because the source could not read them."""

    scores: np.ndarray
    ids: np.ndarray
    unreadable: int = 0


@dataclass
class _Filter:
    selector: faiss.IDSelector | None
    keep_alive: tuple
    fraction: float  # eligible share of the index
    eligible: int  # eligible patches
    exact_ids: np.ndarray | None = None  # small eligible set: scan it exactly
    post_vids: np.ndarray | None = None  # sorted eligible vids, filtered after the search


def search_patches(index: PatchIndex, queries: np.ndarray, k: int, source: VectorSource | None = None,
                   allowed_vids: np.ndarray | None = None, excluded_vids: np.ndarray | None = None,
                   search_params: dict | None = None) -> PatchHits:
    """Top-k patches for each query (q, dim), cosine scores.

    allowed_vids: slides whose patches may be returned (None = all); excluded_vids: slides
    whose patches may not (applied to every query). `search_params` overrides the tuned
    nprobe / k_factor (build-time tuning uses it). Compressed kinds need `source`.
    """
    queries = prepare_vectors(queries, "queries", dim=index.dim)
    k = prepare_k(k)
    params = dict(index.sidecar.get("search_params", {}), **(search_params or {}))
    chosen = _filter(index, allowed_vids, excluded_vids, exact_possible=source is not None)
    if chosen.eligible == 0:
        return _padded(np.empty((queries.shape[0], 0)), np.empty((queries.shape[0], 0), np.int64), k, 0)
    if chosen.exact_ids is not None:
        return exact_patch_search(chosen.exact_ids, queries, k, source)
    rerank = index.spec.rerank and source is not None
    fetch = k * int(params.get("k_factor", 1)) if rerank else k
    hits = _index_search(index, queries, k, fetch, params, chosen, source if rerank else None)
    short = np.flatnonzero((hits.ids >= 0).sum(axis=1) < min(k, chosen.eligible))
    if short.size and index.ivf is not None:
        # The probed lists held too few eligible patches: probe every list for those rows.
        retry = _index_search(index, queries[short], k, fetch, dict(params, nprobe=index.ivf.nlist), chosen,
                              source if rerank else None)
        hits.scores[short], hits.ids[short] = retry.scores, retry.ids
        hits.unreadable += retry.unreadable
    return hits


def _index_search(index: PatchIndex, queries: np.ndarray, k: int, fetch: int, params: dict, chosen: _Filter,
                  source: VectorSource | None) -> PatchHits:
    if chosen.post_vids is not None:
        fetch = min(MAX_FETCH, math.ceil(fetch / max(chosen.fraction, 1e-9)))
    fetch = max(1, min(fetch, index.count))
    faiss_params, keep_alive = _faiss_params(index, params, chosen)
    scores, ids = index.index.search(queries, fetch, params=faiss_params)
    del keep_alive
    if chosen.post_vids is not None:
        vids = ids >> ROW_BITS
        position = np.searchsorted(chosen.post_vids, vids).clip(max=chosen.post_vids.size - 1)
        allowed = (ids >= 0) & (chosen.post_vids[position] == vids)
        scores, ids = np.where(allowed, scores, -np.inf), np.where(allowed, ids, -1)
    if source is None:
        return _top_k(scores, ids, k, 0)
    return _rerank(queries, ids, k, source)


def _faiss_params(index: PatchIndex, params: dict, chosen: _Filter):
    """faiss search parameters carrying nprobe (grown for the filter) and the selector."""
    selector = chosen.selector
    if index.ivf is None:
        return (faiss.SearchParameters(sel=selector) if selector is not None else None), (selector,)
    nlist = index.ivf.nlist
    nprobe = int(params.get("nprobe", max(1, nlist // 16)))
    if chosen.fraction < 1.0:
        nprobe = max(nprobe, min(nlist, math.ceil(nprobe / max(chosen.fraction, 1e-9))))
    ivf_params = faiss.SearchParametersIVF(nprobe=min(nprobe, nlist), sel=selector)
    if isinstance(index.index, faiss.IndexPreTransform):
        wrapped = faiss.SearchParametersPreTransform()
        wrapped.index_params = ivf_params
        return wrapped, (ivf_params, selector, chosen.keep_alive)
    return ivf_params, (selector, chosen.keep_alive)


def _filter(index: PatchIndex, allowed_vids, excluded_vids, exact_possible: bool) -> _Filter:
    """The selector (or exact id set, or post-filter) for the eligible slides."""
    excluded = np.unique(np.asarray(excluded_vids if excluded_vids is not None else [], dtype=np.int64))
    if allowed_vids is None and excluded.size == 0:
        return _Filter(None, (), 1.0, index.count)
    held, counts = index.held_slides()
    eligible = held if allowed_vids is None else np.intersect1d(held, np.asarray(allowed_vids, dtype=np.int64))
    eligible = np.setdiff1d(eligible, excluded, assume_unique=True)
    ineligible = np.setdiff1d(held, eligible, assume_unique=True)
    n_eligible = int(counts[np.searchsorted(held, eligible)].sum()) if eligible.size else 0
    n_ineligible = index.count - n_eligible
    fraction = n_eligible / max(index.count, 1)
    if n_eligible == 0:
        return _Filter(None, (), 0.0, 0)
    if n_ineligible == 0:
        return _Filter(None, (), 1.0, n_eligible)
    if exact_possible and n_eligible <= EXACT_MAX_IDS:
        return _Filter(None, (), fraction, n_eligible, exact_ids=_ids_of(index, eligible))
    # Select by the smaller side: the eligible slides, or the others (negated).
    negate = n_ineligible < n_eligible
    side, side_count = (ineligible, n_ineligible) if negate else (eligible, n_eligible)
    if side.size <= RANGE_SELECTOR_MAX_SLIDES:
        selector, keep = _range_selector(side)
    elif side_count <= SELECTOR_MAX_IDS:
        batch_ids = _ids_of(index, side)
        selector, keep = faiss.IDSelectorBatch(batch_ids), (batch_ids,)
    else:
        return _Filter(None, (), fraction, n_eligible, post_vids=eligible)
    if negate:
        inner, selector = selector, faiss.IDSelectorNot(selector)
        keep = keep + (inner,)
    return _Filter(selector, keep, fraction, n_eligible)


def _range_selector(vids: np.ndarray):
    """An IDSelector true on the patch-id ranges of `vids` (a balanced tree of ORs)."""
    leaves = [faiss.IDSelectorRange(int(v) << ROW_BITS, (int(v) + 1) << ROW_BITS) for v in vids]
    keep = list(leaves)
    while len(leaves) > 1:
        paired = []
        for left, right in zip(leaves[::2], leaves[1::2]):
            paired.append(faiss.IDSelectorOr(left, right))
        if len(leaves) % 2:
            paired.append(leaves[-1])
        keep += paired
        leaves = paired
    return leaves[0], tuple(keep)


def _ids_of(index: PatchIndex, vids: np.ndarray) -> np.ndarray:
    """Sorted patch ids of the given slides held by the index."""
    starts = np.searchsorted(index.ids, vids << ROW_BITS)
    ends = np.searchsorted(index.ids, (vids + 1) << ROW_BITS)
    if starts.size == 0:
        return np.empty(0, np.int64)
    return np.concatenate([np.asarray(index.ids[s:e]) for s, e in zip(starts, ends)]).astype(np.int64)


def exact_patch_search(candidate_ids: np.ndarray, queries: np.ndarray, k: int, source: VectorSource,
                       block: int = 16_384) -> PatchHits:
    """Exact top-k of `queries` among `candidate_ids`, scored with the source's vectors."""
    best_scores = np.empty((queries.shape[0], 0), np.float32)
    best_ids = np.empty((queries.shape[0], 0), np.int64)
    unreadable = 0
    for start in range(0, candidate_ids.size, block):
        chunk = np.asarray(candidate_ids[start:start + block], dtype=np.int64)
        vectors, readable = source.vectors(chunk)
        unreadable += int((~readable).sum())
        scores = queries @ vectors[readable].T
        ids = np.broadcast_to(chunk[readable], scores.shape)
        top = _top_k(np.hstack([best_scores, scores]), np.hstack([best_ids, ids]), k, 0)
        best_scores, best_ids = top.scores, top.ids
    return _padded(best_scores, best_ids, k, unreadable)


def _rerank(queries: np.ndarray, ids: np.ndarray, k: int, source: VectorSource) -> PatchHits:
    """Re-score each row's candidate ids with the source's exact vectors; top k.

    Queries go RERANK_BLOCK_QUERIES at a time: the distinct candidates of a block are read
    once and scored against the block (16 x 160 candidates: 8 MiB of 768-d vectors).
    """
    out_scores = np.full((queries.shape[0], k), -np.inf, np.float32)
    out_ids = np.full((queries.shape[0], k), -1, np.int64)
    unreadable = 0
    for start in range(0, queries.shape[0], RERANK_BLOCK_QUERIES):
        rows = slice(start, start + RERANK_BLOCK_QUERIES)
        block_ids = ids[rows]
        unique = np.unique(block_ids[block_ids >= 0])
        if unique.size == 0:
            continue
        vectors, readable = source.vectors(unique)
        unreadable += int((~readable).sum())
        position = np.searchsorted(unique, block_ids).clip(max=unique.size - 1)
        scores = np.take_along_axis(queries[rows] @ vectors.T, position, axis=1)
        valid = (block_ids >= 0) & readable[position]
        top = _top_k(np.where(valid, scores, -np.inf), np.where(valid, block_ids, -1), k, 0)
        out_scores[rows], out_ids[rows] = top.scores, top.ids
    return PatchHits(out_scores, out_ids, unreadable)


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int, unreadable: int) -> PatchHits:
    """Best k of each row (descending score, ties by smaller id), -1 ids last."""
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=-1)[:, :k]
    hits = _padded(np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1), k, unreadable)
    hits.ids[~np.isfinite(hits.scores)] = -1
    return hits


def _padded(scores: np.ndarray, ids: np.ndarray, k: int, unreadable: int) -> PatchHits:
    missing = k - scores.shape[1]
    if missing > 0:
        scores = np.hstack([scores, np.full((scores.shape[0], missing), -np.inf)])
        ids = np.hstack([ids, np.full((ids.shape[0], missing), -1)])
    return PatchHits(np.ascontiguousarray(scores, np.float32), np.ascontiguousarray(ids, np.int64), unreadable)
