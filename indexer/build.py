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
from threads_search.indexer.recall import DEFAULT_TARGET_RECALL, TunedSearch, tune_search_params
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
    index. The approximate kinds' search knob (efSearch / nprobe) is tuned on a seeded sample
    of up to 1000 database vectors until recall@10 against an exact scan reaches
    `target_recall`; that recall goes into the sidecar with the build parameters.
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

    started = time.perf_counter()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    _configure(index, build_params, seed)
    if spec.needs_training:
        _train(index, vectors, build_params, seed, placement)
    add_in_chunks(index, vectors, ids)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    tuned = tune_search_params(index, spec, build_params, vectors, ids, seed, target_recall)
    tuning_seconds = time.perf_counter() - started

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


def add_in_chunks(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """`index.add_with_ids` a block of ADD_CHUNK_ROWS rows at a time.

    faiss encodes a PQ batch through an (n, 2^nbits * pq_m) float table: 64 KiB per 1024-d
    vector with 64 codes, 655 MiB for 10k vectors at once; blocks keep it at 256 MiB.
    """
    for start in range(0, vectors.shape[0], ADD_CHUNK_ROWS):
        stop = start + ADD_CHUNK_ROWS
        index.add_with_ids(vectors[start:stop], ids[start:stop])


def _configure(index: faiss.Index, build_params: dict, seed: int) -> None:
    """Set construction parameters the factory string cannot carry (efConstruction, seeds)."""
    if "efConstruction" in build_params:
        faiss.downcast_index(index.index).hnsw.efConstruction = build_params["efConstruction"]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return
    ivf.cp.seed = seed
    # nlist is clamped so every list gets MIN_POINTS_PER_LIST training points; faiss's own
    # default (39) would print a warning for the ~4*sqrt(n) lists of small collections.
    ivf.cp.min_points_per_centroid = MIN_POINTS_PER_LIST
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
    index: faiss.Index, vectors: np.ndarray, build_params: dict, seed: int, placement: str
) -> None:
    """Train on a seeded sample of `build_params["train_size"]` rows (k-means on GPU if any)."""
    rng = np.random.default_rng(seed)
    size = build_params["train_size"]
    if size < vectors.shape[0]:
        vectors = vectors[np.sort(rng.choice(vectors.shape[0], size, replace=False))]
    if placement != "gpu":
        index.train(vectors)
        return
    ivf = faiss.extract_index_ivf(index)
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
        # recall@min(10, count - 1): "recall.k" says which when there are 10 vectors or fewer.
        "recall_at_10": round(tuned.recall, 4),
        "recall": {
            "k": tuned.k,
            "value": round(tuned.recall, 4),
            "n_queries": tuned.n_queries,
            "reference": "exact inner-product scan; queries are a seeded sample of the indexed "
            "vectors, each query's own id left out of both lists",
            "trials": tuned.trials,
        },
        "estimated_memory_bytes": spec.memory_bytes(n, dim, build_params),
        "faiss_version": faiss.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
