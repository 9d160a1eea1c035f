"""Where an index lives: always on CPU, with a GPU replica when faiss can use a CUDA device.

The CPU index is the source of truth (it is what gets saved, extended and reconstructed from);
a GPU replica only serves searches. faiss-cpu wheels have no `StandardGpuResources`, so every
GPU call below is reached only when `gpu_available()` is true.
"""

from __future__ import annotations

import faiss

from threads_search.errors import DeviceError, InputError
from threads_search.indexer.kinds import KINDS, IndexKindSpec

DEVICES = ("auto", "cpu", "gpu")
# faiss GPU indexes return at most this many neighbours per query (k-selection limit).
GPU_MAX_K = 2048

_gpu_resources = None


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees at least one CUDA device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(requested: str) -> str:
    """Resolve a request of "auto", "cpu" or "gpu" ("cuda" reads as "gpu") to "cpu" or "gpu".

    "auto" picks the GPU when there is one; an explicit "gpu" without one is a DeviceError.
    """
    wanted = "gpu" if requested == "cuda" else requested
    if wanted not in DEVICES:
        raise InputError(f"unknown device {requested!r}; choose auto, cpu or gpu")
    if wanted == "cpu":
        return "cpu"
    if gpu_available():
        return "gpu"
    if wanted == "auto":
        return "cpu"
    reason = (
        "no CUDA device is visible"
        if hasattr(faiss, "StandardGpuResources")
        else "this faiss has no GPU support (replace faiss-cpu by faiss-gpu-cu12)"
    )
    raise DeviceError(f"device 'gpu' requested but {reason}; use --device cpu")


def device_for_kind(spec: IndexKindSpec, requested: str) -> str:
    """The device an index of kind `spec` runs on for a device request.

    Kinds without a GPU form stay on CPU under "auto"; asking for "gpu" explicitly for one of
    them is a DeviceError rather than a silent CPU run.
    """
    device = resolve_device(requested)
    if device == "gpu" and not spec.gpu_capable:
        if requested == "auto":
            return "cpu"
        gpu_kinds = "|".join(name for name, other in KINDS.items() if other.gpu_capable)
        raise DeviceError(
            f"index kind {spec.name!r} runs on CPU only; use --device cpu or --kind {gpu_kinds}"
        )
    return device


def gpu_resources():
    """The process-wide `faiss.StandardGpuResources` (created on first use)."""
    global _gpu_resources
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return _gpu_resources


def replicate_to_gpu(cpu_index: faiss.Index, search_params: dict) -> faiss.Index:
    """A GPU copy of `cpu_index` (device 0) with the kind's search knobs (nprobe) set on it.

    GPU indexes take no selectors, so the knobs live on the index rather than per call.
    """
    gpu_index = faiss.index_cpu_to_gpu(gpu_resources(), 0, cpu_index)
    space = faiss.GpuParameterSpace()
    for name, value in search_params.items():
        if name == "nprobe":
            space.set_index_parameter(gpu_index, name, float(value))
    return gpu_index


def gpu_clustering_index(dim: int) -> faiss.Index:
    """A GPU inner-product flat index that IVF k-means can use for its assignment step."""
    return faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.IndexFlatIP(dim))
