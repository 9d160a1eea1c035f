"""A set of allowed ids, prepared once and reused by every search that applies it.

Holds the sorted distinct ids and a bitmap over them: faiss's `IDSelectorBitmap` tests an id in
O(1) without the per-search hash table an `IDSelectorBatch` builds, so a filter that keeps half
of 10^6 ids costs the same per query as one that keeps ten. Ids must be non-negative (vector ids
of the atlas are).
"""

from __future__ import annotations

import numpy as np

from threads_search.errors import InputError
from threads_search.indexer.validate import prepare_id_set


BITMAP_MAX_BITS = 1 << 27


class IdFilter:
    """Allowed ids for searches: `ids` (sorted, distinct int64) and a faiss selector over them."""

    def __init__(self, ids: np.ndarray, name: str = "allowed_ids") -> None:
        self.ids = prepare_id_set(ids, name)
        if self.ids.size and self.ids[0] < 0:
            raise InputError(f"{name} hold a negative id ({int(self.ids[0])}); ids are non-negative")
        self._bitmap: np.ndarray | None = None
        self._selector = None
        self._per_index: dict[tuple[int, str], np.ndarray] = {}

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def bitmap(self) -> np.ndarray:
        """uint8 bitmap, bit `id` set for every allowed id (little-endian bit order, as faiss reads it)."""
        if self._bitmap is None:
            bits = np.zeros(int(self.ids[-1]) + 1 if self.ids.size else 1, dtype=bool)
            bits[self.ids] = True
            self._bitmap = np.packbits(bits, bitorder="little")
        return self._bitmap

    def selector(self):
        """A faiss selector over the allowed ids, made once: a bitmap where the id range is dense
        enough (up to 16 MiB of bits), else a hash set (`IDSelectorBatch`)."""
        import faiss

        if self._selector is None:
            largest = int(self.ids[-1]) if self.ids.size else 0
            if largest < max(BITMAP_MAX_BITS, 64 * self.ids.size):
                bitmap = self.bitmap()
                self._selector = faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))
                self._selector.keep_alive = bitmap
            else:
                self._selector = faiss.IDSelectorBatch(self.ids)
        return self._selector

    def within(self, index) -> np.ndarray:
        """The allowed ids that `index` holds (cached per index object)."""
        return self.for_index(index, "ids", lambda: self.ids[index.holds(self.ids)])

    def cached_bytes(self) -> int:
        """Bytes held beyond the ids: bitmap and what `for_index` keeps (vectors of tight filters)."""
        kept = sum(value.nbytes for value in self._per_index.values())
        return kept + (0 if self._bitmap is None else self._bitmap.nbytes)

    def for_index(self, index, name: str, build) -> np.ndarray:
        """`build()` once per (index object, name): what this filter derives from one index, such
        as the ids it holds or their stored vectors (the exact scan of a tight filter)."""
        key = (id(index), name)
        if key not in self._per_index:
            self._per_index[key] = build()
        return self._per_index[key]
