"""FAISS index kinds, automatic choice, build with measured recall, persistence with a JSON
sidecar, filtered search and GPU placement. Imports numpy and faiss, never torch.

The names below load their module (and faiss) on first use, so importing a faiss-free
submodule such as `kind_names` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "add_vectors": "add", "remove_vectors": "add", "build_index": "build", "BuiltIndex": "bundle", "IndexBundle": "bundle",
    "LoadedIndex": "bundle", "choose_kind": "choose", "gpu_available": "device", "resolve_device": "device",
    "KINDS": "kinds", "IndexKindSpec": "kinds", "get_kind": "kinds", "list_kinds": "kinds",
    "load_index": "persist", "save_index": "persist", "search": "knn",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
