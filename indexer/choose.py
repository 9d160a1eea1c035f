"""Automatic choice of the index kind from the collection size and a memory budget."""

from __future__ import annotations

from numbers import Integral

from threads_search.errors import InputError
from threads_search.indexer.kinds import get_kind

# n * dim up to which an exact flat scan is used: 2^26 float32 = 256 MiB, i.e. 65,536 vectors
# at 1024-d. A single query then reads 256 MiB: ~11 ms at the ~23 GB/s one core streamed in
# benchmarks/results (flat scan at 0.85-1.0 of copy bandwidth), batched queries amortise it
# (BLAS), and the answer is exact; TCGA-sized atlases (~11k diagnostic slides) sit far below.
FLAT_MAX_SCALARS = 2**26
# Up to this many vectors HNSW is the CPU choice: at 10^5 x 1024-d it built in about the time
# IVF did (36 vs 31 s, one thread) and answered faster at equal recall (0.41 vs 0.58 ms p50,
# recall@10 0.98). At 10^6 it lost on every count (benchmarks/results/index_all.md): 745 s to
# build against 316 s, recall@10 0.87 even at efSearch 512 against 0.96, 287 against 528
# queries/s. Between the two sizes IVF is taken from 250k on, a measured-side-of-safe cut.
HNSW_MAX_VECTORS = 250_000


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
