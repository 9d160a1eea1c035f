"""A small thread-safe least-recently-used map, for caches that must stay bounded in a long-lived
process (the service's open slides and thumbnails, an atlas's recent search filters)."""

from __future__ import annotations

import threading
from collections import OrderedDict


class LruCache:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int, on_evict=None) -> None:
        self.size, self.on_evict = size, on_evict
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                _, evicted = self._items.popitem(last=False)
                if self.on_evict:
                    self.on_evict(evicted)
        return value
