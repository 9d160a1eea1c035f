"""Index kinds: one spec per name, found with `get_kind`.

Every kind indexes L2-normalised float32 vectors under the inner-product metric (so scores are
cosine similarities) and keeps explicit int64 ids in an `IDMap2` wrapper: the ids are never row
order, and `reconstruct(id)` works for the exact fallback of filtered search.

The capabilities a caller needs (exact? trained? can grow? runs on GPU?) sit on the spec, so no
other module keeps a list of kind names.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass

import faiss

from threads_search.errors import InputError
from threads_search.indexer.kind_names import KIND_NAMES

# Bookkeeping bytes per vector of the IDMap2 wrapper: the id array (8) plus its reverse hash map
# (~48 for a std::unordered_map node and bucket). Used only for memory estimates.
ID_MAP_BYTES_PER_VECTOR = 56
# k-means gets at least this many points per inverted list; nlist is clamped so it always does.
MIN_POINTS_PER_LIST = 8
# Training sample per inverted list. faiss would use 256; 64 trains k-means for 10^6 x 1024-d
# vectors (4000 lists) on 256k instead of 1M points, 4x less time, and the build-time tuning
# of nprobe absorbs the coarser centroids (the recall it reaches is measured and recorded).
TRAIN_POINTS_PER_LIST = 64
PQ_NBITS = 8
# IVF-PQ also trains 2^PQ_NBITS-codeword PQ codebooks, at TRAIN_POINTS_PER_LIST points per
# codeword whatever nlist is (faiss would take 256 per codeword: 64 codebooks of 1024-d take
# minutes to train on that many).
PQ_TRAIN_POINTS = 2**PQ_NBITS * TRAIN_POINTS_PER_LIST
# IVF-PQ needs a training point per PQ codeword (256) after a tenth is held out for tuning.
PQ_MIN_VECTORS = 300
# Candidates re-ranked with the stored vectors per requested result (IndexRefine k_factor).
# 4 left recall@10 at 0.78 on clustered 64-d data (8 PQ codes of 8 dims); 16 reached 0.998.
# Re-ranking 160 candidates costs ~160 * dim flops per query, small next to the list scan.
REFINE_K_FACTOR = 16


@dataclass(frozen=True)
class IndexKindSpec:
    """What one index kind is and what it can do.

    `build_params(n, dim, max_memory_bytes)` gives the construction parameters recorded in the
    sidecar; `factory(build_params)` the faiss `index_factory` string (metric set separately);
    `default_search_params(build_params)` the search parameters before build-time tuning, which
    raises `tuning_knob` along `tuning_ladder(build_params)` until the target recall is met;
    `memory_bytes(n, dim, build_params)` estimates the resident size of the index.
    `search_parameters(search_params, index, selector)` makes the faiss per-call parameters
    carrying the knobs and an optional selector in external ids; `index` is the IDMap2 wrapper,
    which translates a top-level selector to its internal positions.
    `max_growth` bounds incremental adds for trained kinds: the total may reach
    `max_growth * count_at_build` before the learned centroids stop describing the data.
    `exact_filter_below`: filters keeping a smaller fraction of the ids are answered by an
    exact scan of the allowed vectors, because the kind's filtered search loses recall there.
    `keeps_vectors(build_params)`: the index holds the exact float32 vectors, so `reconstruct`
    returns a stored vector as it was added (the query path then needs no other store).
    """

    name: str
    summary: str
    exact: bool
    needs_training: bool
    supports_add: bool
    gpu_capable: bool
    build_params: Callable[[int, int, int | None], dict]
    factory: Callable[[dict], str]
    default_search_params: Callable[[dict], dict]
    memory_bytes: Callable[[int, int, dict], int]
    search_parameters: Callable[
        [dict, faiss.Index, faiss.IDSelector | None], faiss.SearchParameters | None
    ]
    tuning_knob: str | None = None
    tuning_ladder: Callable[[dict], tuple[int, ...]] = lambda params: ()
    max_growth: float | None = None
    exact_filter_below: float = 0.0
    keeps_vectors: Callable[[dict], bool] = lambda params: False

    def factory_string(self, n: int, dim: int, max_memory_bytes: int | None = None) -> str:
        """faiss factory string for `n` vectors of dimension `dim`."""
        return self.factory(self.build_params(n, dim, max_memory_bytes))

    def estimate_bytes(self, n: int, dim: int, max_memory_bytes: int | None = None) -> int:
        """Estimated resident bytes of this kind holding `n` vectors of dimension `dim`."""
        return self.memory_bytes(n, dim, self.build_params(n, dim, max_memory_bytes))


KINDS: dict[str, IndexKindSpec] = {}


def register_kind(spec: IndexKindSpec) -> IndexKindSpec:
    """Add `spec` to the registry under its name (each name once)."""
    if spec.name in KINDS:
        raise ValueError(f"index kind {spec.name!r} registered twice")
    if spec.name not in KIND_NAMES:
        raise ValueError(f"index kind {spec.name!r} is not listed in indexer/kind_names.py")
    KINDS[spec.name] = spec
    return spec


def get_kind(name: str) -> IndexKindSpec:
    """The spec registered as `name`; unknown names are answered with the close matches."""
    return find_registered(KINDS, name, "index kind")


def find_registered(registry: dict, name: str, what: str):
    """`registry[name]`, or an InputError listing the choices and the close matches."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise InputError(f"unknown {what} {name!r} (choose auto, {', '.join(registry)}){hint}")


def list_kinds() -> list[str]:
    """Registered kind names, in registration order."""
    return list(KINDS)


def ivf_nlist(n: int) -> int:
    """Inverted lists for `n` vectors: ~4*sqrt(n), at least MIN_POINTS_PER_LIST points each."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def pq_subquantizers(dim: int) -> int:
    """PQ sub-quantizers: the largest divisor of `dim` up to min(64, dim // 8).

    At least 8 dimensions per 8-bit code keeps codes 16-64x smaller than float32 (64 bytes for
    a 1024-d vector); re-ranking on stored vectors recovers the precision the codes lose.
    """
    limit = max(1, min(64, dim // 8))
    return max(m for m in range(1, limit + 1) if dim % m == 0)


def _power_of_two_ladder(top: int) -> tuple[int, ...]:
    """1, 2, 4 ... up to `top`, always ending with `top` itself."""
    steps = [2**i for i in range(int(math.log2(top)) + 1) if 2**i < top] if top > 1 else []
    return tuple(steps) + (top,)


# --- flat: exact inner product -------------------------------------------------------------

register_kind(
    IndexKindSpec(
        name="flat",
        summary="exact inner-product scan of every vector",
        exact=True,
        needs_training=False,
        supports_add=True,
        gpu_capable=True,
        build_params=lambda n, dim, budget: {},
        factory=lambda p: "IDMap2,Flat",
        default_search_params=lambda p: {},
        memory_bytes=lambda n, dim, p: n * (4 * dim + ID_MAP_BYTES_PER_VECTOR),
        search_parameters=lambda sp, index, sel: (
            faiss.SearchParameters(sel=sel) if sel is not None else None
        ),
        keeps_vectors=lambda p: True,
    )
)

# --- hnsw: graph search on the full vectors --------------------------------------------------

HNSW_M = 32
# faiss defaults to 40; 64 gives a better graph on 1024-d embeddings for a modest build cost.
HNSW_EF_CONSTRUCTION = 64

register_kind(
    IndexKindSpec(
        name="hnsw",
        summary=f"HNSW{HNSW_M} graph over the full vectors, efSearch tuned at build",
        exact=False,
        needs_training=False,
        supports_add=True,
        gpu_capable=False,
        build_params=lambda n, dim, budget: {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
        factory=lambda p: f"IDMap2,HNSW{p['M']},Flat",
        default_search_params=lambda p: {"efSearch": 64},
        # Level 0 holds 2*M int32 links per vector; upper levels add ~1/M of that.
        memory_bytes=lambda n, dim, p: int(
            n * (4 * dim + 8 * p["M"] * (1 + 1 / p["M"]) + 8 + ID_MAP_BYTES_PER_VECTOR)
        ),
        search_parameters=lambda sp, index, sel: faiss.SearchParametersHNSW(
            efSearch=int(sp["efSearch"]), sel=sel
        ),
        tuning_knob="efSearch",
        tuning_ladder=lambda p: (16, 32, 64, 128, 256, 512),
        # The graph walk meets mostly filtered-out nodes under a tight filter: recall@10 fell
        # to 0.85 at 1% and 0.94 at 2% of 20k clustered vectors, 0.998 at 5%.
        exact_filter_below=0.05,
        keeps_vectors=lambda p: True,
    )
)

# --- ivf: inverted lists over the full vectors ---------------------------------------------


def _ivf_build_params(n: int, dim: int, budget: int | None) -> dict:
    nlist = ivf_nlist(n)
    return {"nlist": nlist, "train_size": min(n, nlist * TRAIN_POINTS_PER_LIST)}


register_kind(
    IndexKindSpec(
        name="ivf",
        summary="inverted lists (nlist ~ 4*sqrt(n)) over the full vectors, nprobe tuned at build",
        exact=False,
        needs_training=True,
        supports_add=True,
        gpu_capable=True,
        build_params=_ivf_build_params,
        factory=lambda p: f"IDMap2,IVF{p['nlist']},Flat",
        default_search_params=lambda p: {"nprobe": max(1, p["nlist"] // 16)},
        # Vector + list id + direct-map entry per vector, plus the centroids.
        memory_bytes=lambda n, dim, p: n * (4 * dim + 16 + ID_MAP_BYTES_PER_VECTOR)
        + 4 * dim * p["nlist"],
        search_parameters=lambda sp, index, sel: faiss.SearchParametersIVF(
            nprobe=int(sp["nprobe"]), sel=sel
        ),
        tuning_knob="nprobe",
        tuning_ladder=lambda p: _power_of_two_ladder(p["nlist"]),
        max_growth=2.0,
        keeps_vectors=lambda p: True,
    )
)

# --- ivfpq: compressed codes, re-ranked on stored vectors ------------------------------------


def _ivfpq_memory(n: int, dim: int, p: dict) -> int:
    code_bytes = p["pq_m"] * p["pq_nbits"] // 8
    refine_bytes = 4 * dim if p["refine"] == "Flat" else dim
    tables = 4 * dim * (p["nlist"] + 2 ** p["pq_nbits"])
    return n * (code_bytes + 8 + refine_bytes + ID_MAP_BYTES_PER_VECTOR) + tables


def _ivfpq_build_params(n: int, dim: int, budget: int | None) -> dict:
    """Re-rank on the float32 vectors when they fit the budget, else on 8-bit scalar codes.

    IVF-PQ is chosen because the float32 vectors exceed the memory budget, and re-ranking on
    them would hold them in memory anyway; SQ8 (1 byte per dimension) keeps re-ranking scores
    within ~1e-3 of exact on unit vectors at a quarter of the memory.
    """
    if n < PQ_MIN_VECTORS:
        raise InputError(
            f"ivfpq needs at least {PQ_MIN_VECTORS} vectors to train its codebooks, got {n}; "
            "use --kind flat"
        )
    nlist = ivf_nlist(n)
    params = {
        "nlist": nlist,
        "pq_m": pq_subquantizers(dim),
        "pq_nbits": PQ_NBITS,
        "refine": "Flat",
        "refine_k_factor": REFINE_K_FACTOR,
        "train_size": min(n, max(nlist * TRAIN_POINTS_PER_LIST, PQ_TRAIN_POINTS)),
    }
    if budget is None or _ivfpq_memory(n, dim, params) <= budget:
        return params
    params["refine"] = "SQ8"
    needed = _ivfpq_memory(n, dim, params)
    if needed > budget:
        raise InputError(
            f"memory budget of {budget} bytes is too small for {n} vectors of dimension {dim}: "
            f"the smallest index (ivfpq with SQ8 re-ranking) needs about {needed} bytes"
        )
    return params


def _ivfpq_search_parameters(
    sp: dict, index: faiss.Index, selector: faiss.IDSelector | None
) -> faiss.SearchParameters:
    """IndexRefine forwards only its *base* parameters (a top-level selector is ignored), so the
    selector is translated to internal positions here and placed on the base IVF parameters."""
    translated = (
        faiss.IDSelectorTranslated(index.id_map, selector) if selector is not None else None
    )
    base = faiss.SearchParametersIVF(nprobe=int(sp["nprobe"]), sel=translated)
    params = faiss.IndexRefineSearchParameters(
        k_factor=float(sp["k_factor"]), base_index_params=base
    )
    # The swig objects only point at each other: keep the Python owners alive with them.
    params.keep_alive = (base, translated, selector)
    return params


def _ivfpq_factory(p: dict) -> str:
    refine = "RFlat" if p["refine"] == "Flat" else f"Refine({p['refine']})"
    return f"IDMap2,IVF{p['nlist']},PQ{p['pq_m']}x{p['pq_nbits']},{refine}"


register_kind(
    IndexKindSpec(
        name="ivfpq",
        summary="IVF with product-quantised codes, top candidates re-ranked on stored vectors",
        exact=False,
        needs_training=True,
        supports_add=True,
        # faiss has no GPU form of the re-ranking wrapper (IndexRefine).
        gpu_capable=False,
        build_params=_ivfpq_build_params,
        factory=_ivfpq_factory,
        default_search_params=lambda p: {
            "nprobe": max(1, p["nlist"] // 16),
            "k_factor": p["refine_k_factor"],
        },
        memory_bytes=_ivfpq_memory,
        search_parameters=_ivfpq_search_parameters,
        tuning_knob="nprobe",
        tuning_ladder=lambda p: _power_of_two_ladder(p["nlist"]),
        max_growth=2.0,
        keeps_vectors=lambda p: p["refine"] == "Flat",
    )
)
