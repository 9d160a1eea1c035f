"""Patch-index kinds: one spec per name, and the choice of a kind from a memory budget.

A patch index holds one vector per patch (10^6-10^10 of them in the patch encoder's space,
e.g. 768-d), far more than the slide index, so it differs from the slide kinds of `kinds.py`:
- ids are the patch ids of `patch_ids.py`, stored in the inverted lists themselves (no
  IDMap2: its reverse hash map would cost 56 bytes per vector, more than a PQ code);
- compressed kinds keep no float32 vectors at all: their top `k * k_factor` candidates are
  re-scored exactly with the patches' features read from the feature files (a `VectorSource`).

Kinds, from exact to smallest:

    flat     IDMap,Flat                    4*d + 8 bytes/vector, exact scan (small collections)
    ivf      IVF{nlist},Flat               4*d + 8, exact scores within the probed lists
    ivfsq    IVF{nlist},SQ8                d + 8, 8-bit scalar codes, re-ranked from the files
    ivfpq    IVF{nlist},PQ{m}x8            m + 8 (m = d/8 or d/16), re-ranked from the files

No OPQ rotation: faiss's OPQ training took 78 s for 5,000 768-d vectors (20 iterations) on this
project's two-core machine, about 4 s per iteration that grows with the sample; the exact
re-ranking from the feature files recovers what plain PQ codes lose.

A budget too small for the smallest in-memory codes is refused with the size needed; past one
machine the route is shards by slide (docs/ARCHITECTURE.md), not on-disk lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from threads_search.indexer.kind_names import PATCH_KIND_NAMES
from threads_search.errors import InputError

# n * dim up to which an exact scan is used (as for slides: 256 MiB of float32).
FLAT_MAX_SCALARS = 2**26
# ~2*sqrt(n) lists, at most MAX_NLIST: adding a vector costs nlist * dim flops for its
# assignment (10^7 x 768-d vectors against 4096 centroids: 6e13 flops, ~17 min on one core),
# a query scans nprobe lists of n / nlist codes. At 10^7, 4096 lists hold ~2,400 codes each.
MAX_NLIST = 4096
MIN_POINTS_PER_LIST = 8
# k-means points per list: 16 keeps training cheaper than adding (the tuned nprobe absorbs
# the coarser centroids; the recall reached is measured and recorded).
TRAIN_POINTS_PER_LIST = 16
KMEANS_ITERATIONS = 10
# PQ codebooks are trained on at most this many vectors (64 per codeword).
PQ_TRAIN_VECTORS = 16_384
# Share of the memory budget (above the fixed overhead) the training sample may take, and what training holds per
# sample byte: the sample, faiss's residuals of it (IVF-PQ) and k-means temporaries
# (measured: 25 MiB of 768-d samples peaked at ~75 MiB while an IVF-PQ trained).
TRAIN_BUDGET_SHARE = 0.25
TRAIN_MEMORY_FACTOR = 3
# std::vector doubling: while lists grow their capacity reaches up to twice their content.
LIST_GROWTH_SLACK = 2.0
# What a build holds whatever the collection: HDF5 metadata caches, Python objects, and the
# allocator's retention of freed chunk buffers (glibc keeps up to 32 MiB blocks on its heap
# once its mmap threshold has risen). Measured: ~20 MiB above the index's own buffers.
FIXED_OVERHEAD_BYTES = 24 * 2**20
# Rows per faiss add call: IVF-PQ encodes a call through a (rows, 256 * m) float table
# (24 MiB for 256 rows at m = 96).
ADD_CHUNK_ROWS = 256
# Rows a stream reads from a feature file at a time (and the exact top-10 scores per chunk).
STREAM_CHUNK_ROWS = 2048
# Candidates re-scored from the feature files per requested result.
RERANK_K_FACTOR = {"ivfsq": 4, "ivfpq": 16}


@dataclass(frozen=True)
class PatchKindSpec:
    """What one patch-index kind is; `code_bytes(dim, params)` is bytes per vector in its
    lists (ids excluded), `rerank` whether its candidates are re-scored from the files."""

    name: str
    summary: str
    exact: bool
    trained: bool
    rerank: bool

    def code_bytes(self, dim: int, params: dict) -> int:
        if self.name in ("flat", "ivf"):
            return 4 * dim
        if self.name == "ivfsq":
            return dim
        return params["pq_m"]

    def factory(self, dim: int, params: dict) -> str:
        if self.name == "flat":
            return "IDMap,Flat"
        if self.name == "ivf":
            return f"IVF{params['nlist']},Flat"
        if self.name == "ivfsq":
            return f"IVF{params['nlist']},SQ8"
        return f"IVF{params['nlist']},PQ{params['pq_m']}x8"

    def table_bytes(self, dim: int, params: dict) -> int:
        """Bytes that do not grow with n: centroids, SQ ranges, PQ codebooks."""
        if self.name == "flat":
            return 0
        tables = 4 * dim * params["nlist"]
        if self.name == "ivfsq":
            tables += 8 * dim
        if self.name == "ivfpq":
            tables += 4 * dim * 256
        return tables

    def resident_bytes(self, n: int, dim: int, params: dict) -> int:
        """Memory of the loaded index holding n vectors."""
        return n * (self.code_bytes(dim, params) + 8) + self.table_bytes(dim, params)

    def build_peak_bytes(self, n: int, dim: int, params: dict) -> int:
        """Peak memory of a streaming build: training on the sample, or the growing lists (with
        their growth slack) plus one chunk's workspace, plus the fixed overhead."""
        train = TRAIN_MEMORY_FACTOR * params.get("train_size", 0) * dim * 4
        list_bytes = n * (self.code_bytes(dim, params) + 8)
        adding = LIST_GROWTH_SLACK * list_bytes + self.workspace_bytes(dim, params)
        return int(max(train, adding) + self.table_bytes(dim, params) + FIXED_OVERHEAD_BYTES)

    def workspace_bytes(self, dim: int, params: dict) -> int:
        """Temporaries while adding: a streamed chunk (stored dtype, float32, normalised copy,
        exact scores of up to 1000 tuning queries) and one faiss add call (its vectors, coarse
        distances and, for PQ, the distance tables)."""
        stream = STREAM_CHUNK_ROWS * (10 * dim + 4 * 1000)
        add = ADD_CHUNK_ROWS * (4 * dim + 8 * params.get("nlist", 1) + 4 * 256 * params.get("pq_m", 0))
        return stream + add


PATCH_KINDS: dict[str, PatchKindSpec] = {
    spec.name: spec
    for spec in (
        PatchKindSpec("flat", "exact inner-product scan of every patch", True, False, False),
        PatchKindSpec("ivf", "inverted lists over the float32 vectors", False, True, False),
        PatchKindSpec("ivfsq", "inverted lists of 8-bit scalar codes, re-ranked from the feature files",
                      False, True, True),
        PatchKindSpec("ivfpq", "inverted lists of product-quantised codes, re-ranked from the feature files",
                      False, True, True),
    )
}


if tuple(PATCH_KINDS) != PATCH_KIND_NAMES:
    raise ValueError("patch index kinds differ from indexer/kind_names.py's PATCH_KIND_NAMES")


def get_patch_kind(name: str) -> PatchKindSpec:
    """The spec registered as `name`; unknown names are answered with the close matches."""
    from threads_search.indexer.kinds import find_registered

    return find_registered(PATCH_KINDS, name, "patch index kind")


def patch_nlist(n: int) -> int:
    """Inverted lists for n vectors: ~2*sqrt(n), at most MAX_NLIST, >= MIN_POINTS_PER_LIST each."""
    return max(1, min(round(2 * math.sqrt(n)), MAX_NLIST, n // MIN_POINTS_PER_LIST))


def pq_code_sizes(dim: int) -> list[int]:
    """PQ sub-quantizer counts to try, largest first: the largest divisors of dim up to dim/8
    and dim/16 (8 or 16 dimensions per 8-bit code)."""
    sizes = []
    for limit in (dim // 8, dim // 16):
        divisor = max((m for m in range(1, max(limit, 1) + 1) if dim % m == 0), default=1)
        if divisor not in sizes:
            sizes.append(divisor)
    return sizes


def patch_build_params(kind: str, n: int, dim: int, budget: int, pq_m: int | None = None) -> dict:
    """Construction parameters of `kind` for n vectors within `budget` bytes (recorded in the
    sidecar). The training sample is capped at TRAIN_BUDGET_SHARE of the budget."""
    spec = get_patch_kind(kind)
    if spec.name == "flat":
        return {}
    nlist = patch_nlist(n)
    wanted = nlist * TRAIN_POINTS_PER_LIST
    if spec.name == "ivfpq":
        wanted = max(wanted, PQ_TRAIN_VECTORS)
    affordable = int(TRAIN_BUDGET_SHARE * max(budget - FIXED_OVERHEAD_BYTES, 0) // (4 * dim))
    params = {"nlist": nlist, "train_size": max(1, min(n, wanted, max(affordable, nlist))),
              "kmeans_iterations": KMEANS_ITERATIONS}
    if spec.name == "ivfpq":
        if n < 256:
            raise InputError(f"ivfpq needs at least 256 patches to train its codebooks, got {n}; use --kind flat")
        params["pq_m"] = pq_m or pq_code_sizes(dim)[0]
    if spec.rerank:
        params["rerank_k_factor"] = RERANK_K_FACTOR[spec.name]
    return params


def choose_patch_kind(n: int, dim: int, budget: int, rerank_available: bool = True) -> tuple[str, dict]:
    """(kind, build params) for n vectors of dimension dim within `budget` bytes.

    Rule, in order, taking the first whose build peak (`build_peak_bytes`) fits the budget:
    1. "flat" when n * dim <= FLAT_MAX_SCALARS (87k patches at 768-d): exact;
    2. "ivf" (float32 lists: no re-ranking needed);
    3. "ivfsq" (8-bit codes, a quarter of the memory);
    4. "ivfpq" with d/8, then d/16 bytes per code;
    otherwise InputError naming the size the smallest would need.
    Without a `VectorSource` to re-rank from, only the uncompressed kinds are considered.
    """
    if n < 1 or dim < 1:
        raise InputError(f"cannot index {n} patches of dimension {dim}")
    if budget <= 0:
        raise InputError(f"--max-memory must be positive; got {budget} bytes")
    candidates: list[tuple[str, dict]] = []
    if n * dim <= FLAT_MAX_SCALARS:
        candidates.append(("flat", patch_build_params("flat", n, dim, budget)))
    candidates.append(("ivf", patch_build_params("ivf", n, dim, budget)))
    if rerank_available:
        candidates.append(("ivfsq", patch_build_params("ivfsq", n, dim, budget)))
        if n >= 256:
            candidates += [("ivfpq", patch_build_params("ivfpq", n, dim, budget, pq_m=m)) for m in pq_code_sizes(dim)]
    for kind, params in candidates:
        if get_patch_kind(kind).build_peak_bytes(n, dim, params) <= budget:
            return kind, params
    kind, params = candidates[-1]
    needed = get_patch_kind(kind).build_peak_bytes(n, dim, params)
    raise InputError(f"--max-memory {budget} bytes is too small for {n} patches of dimension {dim}: the smallest "
                     f"index here ({kind}) needs about {needed} bytes; raise it, index a --mosaic, or shard by slide")
