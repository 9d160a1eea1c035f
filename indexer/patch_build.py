"""Build a patch index from a stream of (ids, vectors) chunks, never holding all vectors.

Two passes over the stream (it must give the same chunks each time):
1. a seeded sample: the training vectors (at most a quarter of the memory budget) and the
   held-out tuning queries;
2. every vector but the held-out ones is added, ADD_CHUNK_ROWS at a time, while the exact
   top-10 of the held-out queries is accumulated over the same chunks (`StreamingTopK`).
Then nprobe is raised along powers of two until recall@10 of the held-out queries, searched
exactly as a user's query is (re-ranked from the `VectorSource` for compressed kinds), reaches
the target; the held-out vectors are added last. The sidecar records the factory string,
the build parameters, the memory budget and estimates, and every tuning trial.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Protocol

import faiss
import numpy as np

from threads_search.errors import InputError
from threads_search.indexer.patch_index import PATCH_SIDECAR_VERSION, PatchIndex
from threads_search.indexer.patch_kinds import (
    ADD_CHUNK_ROWS,
    MIN_POINTS_PER_LIST,
    PQ_TRAIN_VECTORS,
    choose_patch_kind,
    get_patch_kind,
    patch_build_params,
)
from threads_search.indexer.patch_search import VectorSource, search_patches
from threads_search.indexer.recall import RECALL_K, RECALL_QUERIES, StreamingTopK, recall_at_k

DEFAULT_TARGET_RECALL = 0.95
# Flops the exact top-10 of the held-out queries may cost (q * n * d * 2): about a minute on
# one core. It sets the number of tuning queries for large collections (260 at 10^7 x 768).
EXACT_FLOPS_BUDGET = 4e12
MIN_TUNING_QUERIES = 100
PQ_ITERATIONS = 15


class PatchStream(Protocol):
    """The vectors to index: `n` rows of dimension `dim`, in chunks."""

    n: int
    dim: int

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (c,) int64, vectors (c, dim) float32 L2-normalised), the same sequence on every call."""
        ...


Progress = Callable[[int, int, str], None]


def default_memory_budget() -> int:
    """Half of this machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def build_patch_index(stream: PatchStream, source: VectorSource | None = None, kind: str = "auto",
                      max_memory: int | None = None, seed: int = 0, target_recall: float = DEFAULT_TARGET_RECALL,
                      progress: Progress | None = None) -> PatchIndex:
    """Index every vector of `stream` under its patch id.

    kind: "auto" (`choose_patch_kind` from n, dim and the budget) or a patch kind name.
    max_memory: budget in bytes for the build and the loaded index (default: half the RAM).
    source: exact vectors for re-ranking; required by the compressed kinds.
    """
    if not 0.0 < target_recall <= 1.0:
        raise InputError(f"target recall must be in (0, 1]; got {target_recall}")
    n, dim = int(stream.n), int(stream.dim)
    if n < 1:
        raise InputError("there are no patches to index")
    budget = int(max_memory) if max_memory is not None else default_memory_budget()
    if kind == "auto":
        kind, params = choose_patch_kind(n, dim, budget, rerank_available=source is not None)
    else:
        params = patch_build_params(kind, n, dim, budget)
    spec = get_patch_kind(kind)
    if spec.rerank and source is None:
        raise InputError(f"a {kind} patch index re-ranks from the feature files, and none were given")
    report = progress or (lambda done, total, phase: None)
    factory = spec.factory(dim, params)
    started = time.perf_counter()

    rng = np.random.default_rng(seed)
    n_queries = 0 if spec.exact else tuning_query_count(n, dim)
    held_out = np.sort(rng.choice(n, n_queries, replace=False)) if n_queries else np.empty(0, np.int64)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    _configure(index, params, seed)
    held_ids, held_vectors = np.empty(0, np.int64), np.empty((0, dim), np.float32)
    if spec.trained:
        rest = np.setdiff1d(np.arange(n), held_out, assume_unique=True)
        train_rows = np.sort(rng.choice(rest, min(params["train_size"], rest.size), replace=False))
        (train_ids, train_vectors), (held_ids, held_vectors) = _collect(stream, [train_rows, held_out], report)
        _train(index, train_vectors, params)
        del train_ids, train_vectors

    ids = np.empty(n, dtype=np.int64)
    exact = StreamingTopK(held_vectors, min(RECALL_K, n - n_queries)) if n_queries else None
    position, filled = 0, 0
    for chunk_ids, chunk_vectors in stream.chunks():
        keep = ~np.isin(np.arange(position, position + chunk_ids.size), held_out, assume_unique=True)
        position += chunk_ids.size
        chunk_ids, chunk_vectors = chunk_ids[keep], chunk_vectors[keep]
        _add(index, chunk_ids, chunk_vectors)
        if exact is not None:
            exact.update(chunk_ids, chunk_vectors)
        ids[filled:filled + chunk_ids.size] = chunk_ids
        filled += chunk_ids.size
        report(position, n, "adding")
    if position != n:
        raise InputError(f"the patch stream gave {position} vectors, not the {n} it announced")
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    ids[filled:] = held_ids
    sorted_ids = np.sort(ids[:filled])
    tuned = _tune(PatchIndex(index, sorted_ids, {"kind": kind, "dimension": dim, "search_params": {}}),
                  spec, params, held_vectors, exact, source, target_recall, report)
    tuning_seconds = time.perf_counter() - started
    _add(index, held_ids, held_vectors)
    ids.sort()
    repeated = np.flatnonzero(ids[1:] == ids[:-1])
    if repeated.size:
        raise InputError(f"patch id {ids[repeated[0]]} occurs twice in the stream")
    sidecar = {
        "format_version": PATCH_SIDECAR_VERSION,
        "level": "patches",
        "kind": kind,
        "factory": factory,
        "metric": "inner_product",
        "l2_normalized": True,
        "dimension": dim,
        "count": n,
        "build_params": dict(params, seed=seed),
        "search_params": tuned["search_params"],
        "recall_at_10": tuned["recall"],
        "recall": {
            "k": tuned["k"], "value": tuned["recall"], "n_queries": int(n_queries), "target": target_recall,
            "reference": "exact inner-product scan over every indexed vector (streamed); queries are a seeded "
                         "sample of the vectors, held out of the index while it was tuned and added after",
            "reranked_from": "feature files" if spec.rerank else None,
            "trials": tuned["trials"],
        },
        "memory": {
            "budget_bytes": budget,
            "bytes_per_vector": spec.code_bytes(dim, params) + 8,
            "estimated_resident_bytes": spec.resident_bytes(n, dim, params),
            "estimated_build_peak_bytes": spec.build_peak_bytes(n, dim, params),
        },
        "build_seconds": round(build_seconds, 3),
        "tuning_seconds": round(tuning_seconds, 3),
        "faiss_version": faiss.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return PatchIndex(index=index, ids=ids, sidecar=sidecar)


def _add(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    """add_with_ids, ADD_CHUNK_ROWS rows per call (bounds faiss's PQ encoding tables)."""
    for start in range(0, ids.size, ADD_CHUNK_ROWS):
        block = slice(start, start + ADD_CHUNK_ROWS)
        index.add_with_ids(np.ascontiguousarray(vectors[block]), np.ascontiguousarray(ids[block]))


def tuning_query_count(n: int, dim: int) -> int:
    """Held-out tuning queries: up to RECALL_QUERIES, a tenth of n at most, fewer for large
    collections so that their exact answers cost at most EXACT_FLOPS_BUDGET."""
    affordable = int(EXACT_FLOPS_BUDGET // (2 * n * dim))
    return int(min(RECALL_QUERIES, n // 10, max(MIN_TUNING_QUERIES, affordable)))


def _collect(stream: PatchStream, wanted: list[np.ndarray], report: Progress) -> list[tuple[np.ndarray, np.ndarray]]:
    """One pass over the stream keeping the rows at the sorted global positions of each array
    (filled in place: no list of pieces to concatenate, so the sample is held once)."""
    out = [(np.empty(rows.size, np.int64), np.empty((rows.size, stream.dim), np.float32)) for rows in wanted]
    position = 0
    for chunk_ids, chunk_vectors in stream.chunks():
        end = position + chunk_ids.size
        for (ids, vectors), rows in zip(out, wanted):
            lo, hi = np.searchsorted(rows, [position, end])
            if hi > lo:
                local = rows[lo:hi] - position
                ids[lo:hi] = chunk_ids[local]
                vectors[lo:hi] = chunk_vectors[local]
        position = end
        report(position, stream.n, "sampling")
    return out


def _configure(index: faiss.Index, params: dict, seed: int) -> None:
    """Seeds and iteration counts the factory string cannot carry."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    ivf.cp.niter = params["kmeans_iterations"]
    # The sample was drawn to size already; faiss must neither subsample it nor warn about it.
    ivf.cp.min_points_per_centroid = 1
    ivf.cp.max_points_per_centroid = 1 << 30
    ivf = faiss.downcast_index(ivf)
    if hasattr(ivf, "pq"):
        ivf.pq.cp.seed = seed
        ivf.pq.cp.niter = PQ_ITERATIONS
        ivf.pq.cp.min_points_per_centroid = 1  # small collections train on fewer than 39 per codeword
        ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_VECTORS // 256
        # Polysemous codes serve only Hamming pre-filtering, which is not used.
        ivf.do_polysemous_training = False


def _train(index: faiss.Index, vectors: np.ndarray, params: dict) -> None:
    if vectors.shape[0] < MIN_POINTS_PER_LIST and params.get("nlist", 1) > 1:
        raise InputError(f"too few patches ({vectors.shape[0]}) to train {params['nlist']} inverted lists")
    index.train(vectors)


def _tune(index: PatchIndex, spec, params: dict, queries: np.ndarray, exact: StreamingTopK | None,
          source: VectorSource | None, target_recall: float, report: Progress) -> dict:
    """Cheapest nprobe (powers of two up to nlist) whose recall@10 reaches the target; the most
    thorough one if none does, and the recall recorded is the one measured."""
    k_factor = params.get("rerank_k_factor", 1)
    if exact is None or queries.shape[0] == 0:
        return {"search_params": {"k_factor": k_factor} if spec.rerank else {}, "recall": 1.0, "k": RECALL_K,
                "trials": []}
    _, true_ids = exact.result()
    k = true_ids.shape[1]
    nlist = params["nlist"]
    ladder = [2**i for i in range(int(np.log2(nlist)) + 1) if 2**i < nlist] + [nlist]
    trials = []
    for nprobe in ladder:
        search_params = {"nprobe": nprobe, "k_factor": k_factor}
        found = search_patches(index, queries, k, source=source, search_params=search_params).ids
        recall = recall_at_k(found, true_ids)
        trials.append({**search_params, "recall": round(recall, 4)})
        report(len(trials), len(ladder), "tuning")
        if recall >= target_recall:
            break
    return {"search_params": {"nprobe": nprobe, "k_factor": k_factor}, "recall": round(recall, 4), "k": k,
            "trials": trials}
