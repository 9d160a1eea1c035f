"""FAISS index kinds, automatic choice, build with measured recall, persistence with a JSON
sidecar, filtered search and GPU placement. Imports numpy and faiss, never torch."""

from threads_search.indexer.add import add_vectors
from threads_search.indexer.build import build_index
from threads_search.indexer.bundle import BuiltIndex, IndexBundle, LoadedIndex
from threads_search.indexer.choose import choose_kind
from threads_search.indexer.device import gpu_available, resolve_device
from threads_search.indexer.kinds import KINDS, IndexKindSpec, get_kind, list_kinds
from threads_search.indexer.persist import load_index, save_index
from threads_search.indexer.knn import search

__all__ = [
    "KINDS",
    "BuiltIndex",
    "IndexBundle",
    "IndexKindSpec",
    "LoadedIndex",
    "add_vectors",
    "build_index",
    "choose_kind",
    "get_kind",
    "gpu_available",
    "list_kinds",
    "load_index",
    "resolve_device",
    "save_index",
    "search",
]
