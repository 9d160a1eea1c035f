"""A small thread-safe least-recently-used map, for caches that must stay bounded in a long-lived
process (the service's open slides and thumbnails, an atlas's recent search filters)."""

from __future__ import annotations

import threading
from collections import OrderedDict


class LruCache:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int, on_evict=None, max_bytes: int | None = None, size_of=None) -> None:
        """At most `size` entries; with `max_bytes` and `size_of(value)`, also at most that many bytes
        (weighed when an entry is added: a value that grows afterwards counts from the next add)."""
        self.size, self.on_evict = size, on_evict
        self.max_bytes, self.size_of = max_bytes, size_of
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
            while len(self._items) > self.size or (len(self._items) > 1 and self._over_budget()):
                _, evicted = self._items.popitem(last=False)
                if self.on_evict:
                    self.on_evict(evicted)
        return value

    def _over_budget(self) -> bool:
        return self.max_bytes is not None and sum(self.size_of(v) for v in self._items.values()) > self.max_bytes
