"""The service's one open atlas, kept warm and reopened when its published state changes.

`AtlasHandle.reader()` gives each request its own DuckDB cursor on the current generation's
read-only connection (cursors may run in parallel threads; one connection may not). A
generation is one opened state of the atlas; when the database file changes on disk (another
process ingested, embedded or indexed), the next request closes the old generation once the
requests in flight on it have finished (DuckDB keeps one database instance per file path in a
process, so the new state opens only after that) and opens the new one: nothing is restarted.

Generations are the atlas's own published generations (`threads_search.atlas.generations`):
a writer in another process publishes a new read-only copy of the database and replaces the
small `CURRENT` file; the next request sees the new generation number, opens that copy (a
different file, so it opens at once) and the old one is closed in the background once its
requests have finished. The server never holds the writer's database, so writers never wait
for it. Each request reads through a view of the generation's atlas: its own DuckDB cursor
(cursors run in parallel threads; one connection may not) and the generation's shared caches
(loaded indexes, id sets, item lookups), so a warm server answers in about a millisecond.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from threads_search.atlas.generations import current_generation
from threads_search.atlas.store import Atlas, open_atlas
from threads_search.errors import AtlasError


DRAIN_TIMEOUT_S = 60.0


@dataclass
class Generation:
    """One opened state of the atlas: its connection, when it was opened, and caches valid for it."""

    stamp: tuple
    atlas: Atlas
    opened_at: float
    number: int
    cache: dict = field(default_factory=dict)
    _users: int = 0
    _closed: bool = False
    _idle: threading.Condition = field(default_factory=threading.Condition)

    def cached(self, key, compute):
        """`compute()` once per generation (a race may compute twice; both results are equal)."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def _enter(self) -> bool:
        """Count one more request on this generation; False once it is closed."""
        with self._idle:
            if self._closed:
                return False
            self._users += 1
            return True

    def _leave(self) -> None:
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def drain_and_close(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait for the requests using this generation to finish, then close its connection."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._users == 0, timeout_s):
                raise AtlasError(f"{self.atlas.root}: the atlas changed on disk, and requests on its previous state "
                                 f"are still running after {timeout_s:.0f} s; retry")
            if not self._closed:
                self.atlas.close()
                self._closed = True


class AtlasHandle:
    """The atlas folder a service reads; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._current: Generation | None = None
        self._opened = 0
        self.last_error: str | None = None
        self.current()  # refuse a missing or unreadable atlas before serving anything

    def _published_stamp(self) -> int:
        """The published generation readers should see (a read of the small CURRENT file)."""
        return current_generation(self.root)

    def _open_connection(self) -> Atlas:
        return open_atlas(self.root, read_only=True)

    def current(self) -> Generation:
        """The generation matching the atlas on disk, opening a new one when it changed.

        The new generation is opened first (its own file), then becomes current; the previous
        one is closed in the background once the requests in flight on it have finished.
        """
        stamp = self._published_stamp()
        current = self._current
        if current is not None and current.stamp == stamp:
            return current
        with self._lock:
            current = self._current
            if current is not None and current.stamp == stamp:
                return current
            try:
                atlas = self._open_connection()
            except AtlasError as error:
                self.last_error = str(error)
                raise
            self._opened += 1
            self._current = Generation(stamp=stamp, atlas=atlas, opened_at=time.time(), number=self._opened)
            self.last_error = None
            if current is not None:
                threading.Thread(target=current.drain_and_close, daemon=True, name="close-old-generation").start()
            return self._current

    @contextlib.contextmanager
    def reader(self) -> Iterator[tuple[Atlas, Generation]]:
        """(an Atlas on a cursor of its own, its generation) for one request."""
        generation = self.current()
        while not generation._enter():  # closed between current() and here: take the new one
            generation = self.current()
        try:
            view = generation.atlas.view()
            try:
                yield view, generation
            finally:
                view.connection.close()
        finally:
            generation._leave()

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.drain_and_close()
                self._current = None

