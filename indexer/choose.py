"""Automatic choice of the index kind from the collection size and a memory budget."""

from __future__ import annotations

from numbers import Integral

from threads_search.errors import InputError
from threads_search.indexer.kinds import get_kind

# n * dim up to which an exact flat scan is used: 2^26 float32 = 256 MiB, i.e. 65,536 vectors
# at 1024-d. Scanning that per query costs ~25 ms at the ~10 GB/s one core streams from memory
# (benchmarks/results/index.md measures it), batched queries amortise it, and the answer is
# exact; pathology atlases of TCGA size (~11k diagnostic slides) sit far below it.
FLAT_MAX_SCALARS = 2**26
# Above this many vectors the HNSW graph build (inserts ~n log n, slow on a few cores) costs more
# than IVF's k-means + list assignment, so IVF is preferred even on CPU.
HNSW_MAX_VECTORS = 1_000_000


def choose_kind(n: int, dim: int, max_memory_bytes: int | None = None, gpu: bool = False) -> str:
    """Index kind for `n` vectors of dimension `dim`.

    Rule, in order:
    1. "flat" (exact) when n * dim <= FLAT_MAX_SCALARS (65,536 vectors at 1024-d);
    2. otherwise an approximate index over the full vectors: "ivf" on a GPU (faiss has no GPU
       HNSW) or above HNSW_MAX_VECTORS vectors, "hnsw" below (the best latency at equal recall
       on CPU);
    3. "ivfpq" (compressed codes, candidates re-ranked on stored vectors) whenever the kind
       picked above would exceed `max_memory_bytes` by its estimated resident size
       (~n * dim * 4 bytes plus links/ids).
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise InputError(f"cannot choose an index for {n!r} vectors: need at least one")
    if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
        raise InputError(f"cannot choose an index for dimension {dim!r}")
    if max_memory_bytes is not None and max_memory_bytes <= 0:
        raise InputError(f"memory budget must be positive; got {max_memory_bytes}")
    n, dim = int(n), int(dim)
    if n * dim <= FLAT_MAX_SCALARS:
        name = "flat"
    elif gpu or n > HNSW_MAX_VECTORS:
        name = "ivf"
    else:
        name = "hnsw"
    if max_memory_bytes is not None and get_kind(name).estimate_bytes(n, dim) > max_memory_bytes:
        return "ivfpq"
    return name
