"""An index together with its sidecar: what `build_index` returns and `load_index` reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from threads_search.indexer.kinds import IndexKindSpec, get_kind

# Version of the sidecar layout written by `build_index` / `save_index`.
SIDECAR_VERSION = 1
# What to tell a user whose index cannot be used or extended.
REBUILD_HINT = "rebuild with `threads-search index ATLAS`"


@dataclass
class IndexBundle:
    """A faiss index and the JSON-ready sidecar that describes it.

    `index` is the CPU `IndexIDMap2` (the source of truth: saved, extended, reconstructed
    from); `gpu_index` a GPU replica that serves searches, or None on CPU.
    """

    index: faiss.Index
    sidecar: dict
    gpu_index: faiss.Index | None = None
    _sorted_ids: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.sidecar["kind"]

    @property
    def spec(self) -> IndexKindSpec:
        return get_kind(self.kind)

    @property
    def dim(self) -> int:
        return int(self.sidecar["dimension"])

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def device(self) -> str:
        return "gpu" if self.gpu_index is not None else "cpu"

    @property
    def search_params(self) -> dict:
        return dict(self.sidecar["search_params"])

    def sorted_ids(self) -> np.ndarray:
        """(count,) int64 ids held by the index, ascending (cached until the count changes)."""
        if self._sorted_ids is None or self._sorted_ids.shape[0] != self.index.ntotal:
            self._sorted_ids = np.sort(faiss.vector_to_array(self.index.id_map))
        return self._sorted_ids

    def keeps_vectors(self) -> bool:
        """Whether `stored_vectors` can return the exact vectors (the kind stores them whole)."""
        return bool(self.spec.keeps_vectors(self.sidecar.get("build_params", {})))

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """(len(ids), dim) float32 exact vectors of held ids, or None for kinds that keep only codes."""
        if not self.keeps_vectors():
            return None
        ivf = faiss.try_extract_index_ivf(self.index.index)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()  # once: 8 bytes per vector for O(1) reconstruction
        return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids),) bool: which of `ids` are in the index."""
        return sorted_membership(np.asarray(ids, dtype=np.int64), self.sorted_ids())


@dataclass
class BuiltIndex(IndexBundle):
    """A freshly built index (not yet saved)."""


@dataclass
class LoadedIndex(IndexBundle):
    """An index read from disk; `path` is the file stem (`<path>.faiss`, `<path>.json`)."""

    path: Path | None = None


def sorted_membership(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """(len(values),) bool: which `values` occur in the ascending array `sorted_set`."""
    if sorted_set.size == 0:
        return np.zeros(values.shape, dtype=bool)
    positions = np.searchsorted(sorted_set, values).clip(max=sorted_set.size - 1)
    return sorted_set[positions] == values
