"""Build an index from vectors and ids, measure its recall, and describe it in a sidecar."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import faiss
import numpy as np

from threads_search.errors import InputError
from threads_search.indexer.bundle import SIDECAR_VERSION, BuiltIndex
from threads_search.indexer.choose import choose_kind
from threads_search.indexer.device import (
    device_for_kind,
    gpu_clustering_index,
    replicate_to_gpu,
    resolve_device,
)
from threads_search.indexer.kinds import (
    MIN_POINTS_PER_LIST,
    TRAIN_POINTS_PER_LIST,
    IndexKindSpec,
    get_kind,
)
from threads_search.indexer.recall import (
    DEFAULT_TARGET_RECALL,
    RECALL_K,
    TunedSearch,
    exact_top_ids,
    held_out_rows,
    tune_search_params,
)
from threads_search.indexer.validate import prepare_ids, prepare_vectors

METRIC = "inner_product"
# Rows added per faiss call (see `add_in_chunks`).
ADD_CHUNK_ROWS = 4096


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    kind: str = "auto",
    device: str = "auto",
    max_memory: int | None = None,
    seed: int = 0,
    model_id: str | None = None,
    modality: str | None = None,
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> BuiltIndex:
    """Index `vectors` (n, dim) under explicit `ids` (n,) int64.

    Rows are L2-normalised (inner product = cosine). `kind` is a registered kind or "auto"
    (`choose_kind`); `device` "auto", "cpu" or "gpu"; `max_memory` a budget in bytes for the
    index. A seeded sample of up to 1000 of the vectors is held out of the index, used as
    unseen queries to raise the approximate kinds' search knob (efSearch / nprobe) until
    recall@10 against an exact scan reaches `target_recall`, then added; that recall goes into
    the sidecar with the build parameters.
    Raises InputError (bad vectors or ids, unknown kind), DeviceError (gpu unavailable).
    """
    if not 0.0 < target_recall <= 1.0:
        raise InputError(f"target recall must be in (0, 1]; got {target_recall}")
    vectors = prepare_vectors(vectors)
    ids = prepare_ids(ids, vectors.shape[0])
    n, dim = vectors.shape
    if kind == "auto":
        kind = choose_kind(n, dim, max_memory, gpu=resolve_device(device) == "gpu")
    spec = get_kind(kind)
    placement = device_for_kind(spec, device)
    build_params = spec.build_params(n, dim, max_memory)
    factory = spec.factory(build_params)

    # Rows held out of the index while it is tuned: unseen queries for the recall measurement.
    held_out = held_out_rows(n, seed)
    in_index = np.ones(n, dtype=bool)
    in_index[held_out] = False

    started = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    _configure(index, build_params, seed)
    if spec.needs_training:
        _train(index, vectors, in_index, build_params, seed, placement)
    add_in_chunks(index, vectors, ids, in_index)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    tuned = _tune_on_held_out(index, spec, build_params, vectors, ids, in_index, target_recall)
    tuning_seconds = time.perf_counter() - started

    started = time.perf_counter()
    add_in_chunks(index, vectors[held_out], ids[held_out])
    build_seconds += time.perf_counter() - started

    gpu_index = replicate_to_gpu(index, tuned.search_params) if placement == "gpu" else None
    sidecar = _sidecar(spec, factory, build_params, tuned, n, dim, model_id, modality)
    sidecar["build_params"].update(seed=seed, max_memory_bytes=max_memory)
    sidecar["recall"]["target"] = None if spec.exact else target_recall
    sidecar.update(
        build_seconds=round(build_seconds, 3),
        tuning_seconds=round(tuning_seconds, 3),
        device=placement,
    )
    return BuiltIndex(index=index, sidecar=sidecar, gpu_index=gpu_index)


def _tune_on_held_out(
    index: faiss.Index,
    spec: IndexKindSpec,
    build_params: dict,
    vectors: np.ndarray,
    ids: np.ndarray,
    in_index: np.ndarray,
    target_recall: float,
) -> TunedSearch:
    """Tune the search knob with the rows outside `in_index` (bool mask) as queries."""
    held_out = np.flatnonzero(~in_index)
    k = min(RECALL_K, int(in_index.sum())) if held_out.size else 0
    true_ids = exact_top_ids(vectors[held_out], vectors, ids, k, in_index)
    return tune_search_params(index, spec, build_params, vectors[held_out], true_ids, target_recall)


def add_in_chunks(
    index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray | None = None
) -> None:
    """`index.add_with_ids` ADD_CHUNK_ROWS rows at a time (only `rows`, a bool mask, if given).

    faiss encodes a PQ batch through an (n, 2^nbits * pq_m) float table: 64 KiB per 1024-d
    vector with 64 codes, 655 MiB for 10k vectors at once; blocks keep it at 256 MiB.
    """
    for start in range(0, vectors.shape[0], ADD_CHUNK_ROWS):
        block = slice(start, start + ADD_CHUNK_ROWS)
        if rows is None:
            index.add_with_ids(vectors[block], ids[block])
        elif rows[block].any():
            index.add_with_ids(vectors[block][rows[block]], ids[block][rows[block]])


def _configure(index: faiss.Index, build_params: dict, seed: int) -> None:
    """Set construction parameters the factory string cannot carry (efConstruction, seeds)."""
    if "efConstruction" in build_params:
        faiss.downcast_index(index.index).hnsw.efConstruction = build_params["efConstruction"]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    ivf = faiss.downcast_index(ivf)
    if isinstance(ivf, faiss.IndexIVFFlat):
        # reconstruct(id) must work for the exact fallback of filtered search.
        ivf.make_direct_map()
    if hasattr(ivf, "pq"):
        ivf.pq.cp.seed = seed
        # 256 codewords per sub-quantizer from as few as PQ_MIN_VECTORS points is intended.
        ivf.pq.cp.min_points_per_centroid = 1
        ivf.pq.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        # Polysemous codes only serve Hamming pre-filtering, which is not used; training them
        # took 30 of 31 seconds of a 10k-vector build.
        ivf.do_polysemous_training = False


def _train(
    index: faiss.Index,
    vectors: np.ndarray,
    rows: np.ndarray,
    build_params: dict,
    seed: int,
    placement: str,
) -> None:
    """Train on a seeded sample of `build_params["train_size"]` of the `rows` (bool mask).

    k-means runs on the GPU when the index is placed there.
    """
    candidates = np.flatnonzero(rows)
    size = min(build_params["train_size"], candidates.size)
    sample = np.sort(np.random.default_rng(seed).choice(candidates, size, replace=False))
    vectors = vectors[sample]
    ivf = faiss.extract_index_ivf(index)
    # nlist is clamped to MIN_POINTS_PER_LIST vectors per list, of which the held-out tenth
    # leaves >= 7 (fewer only in collections under 8 vectors); faiss's own threshold (39)
    # would print a warning for the ~4*sqrt(n) lists of every small collection.
    ivf.cp.min_points_per_centroid = min(MIN_POINTS_PER_LIST - 1, size // ivf.nlist)
    if placement != "gpu":
        index.train(vectors)
        return
    clustering_index = gpu_clustering_index(vectors.shape[1])
    ivf.clustering_index = clustering_index
    try:
        index.train(vectors)
    finally:
        # The IVF does not own it: leave no pointer to a GPU index Python will free.
        ivf.clustering_index = None


def _sidecar(
    spec: IndexKindSpec,
    factory: str,
    build_params: dict,
    tuned: TunedSearch,
    n: int,
    dim: int,
    model_id: str | None,
    modality: str | None,
) -> dict:
    """The JSON-ready description of a freshly built index."""
    return {
        "format_version": SIDECAR_VERSION,
        "kind": spec.name,
        "factory": factory,
        "metric": METRIC,
        "l2_normalized": True,
        "dimension": dim,
        "count": n,
        "count_at_build": n,
        "model_id": model_id,
        "modality": modality,
        "build_params": dict(build_params),
        "search_params": tuned.search_params,
        # recall@min(10, vectors not held out): "recall.k" says which for tiny collections.
        "recall_at_10": round(tuned.recall, 4),
        "recall": {
            "k": tuned.k,
            "value": round(tuned.recall, 4),
            "n_queries": tuned.n_queries,
            "reference": "exact inner-product scan; queries are a seeded sample of the vectors, "
            "held out of the index while it was tuned and added after",
            "trials": tuned.trials,
        },
        "estimated_memory_bytes": spec.memory_bytes(n, dim, build_params),
        "faiss_version": faiss.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
