"""The service's one open atlas, kept warm and reopened when its published state changes.

`AtlasHandle.reader()` gives each request its own DuckDB cursor on the current generation's
read-only connection (cursors may run in parallel threads; one connection may not). A
generation is one opened state of the atlas; when the database file changes on disk (another
process ingested, embedded or indexed), the next request closes the old generation once the
requests in flight on it have finished (DuckDB keeps one database instance per file path in a
process, so the new state opens only after that) and opens the new one: nothing is restarted.

This is the one seam to the atlas's reliability layer: today a change is detected by a stat of
`atlas.duckdb` (and its write-ahead log); published read-only generations will replace
`_published_stamp` and `_open_connection`, and nothing else here needs to change. A new file
renamed over `atlas.duckdb` (how a generation is published) is picked up at once; until the
atlas publishes that way, a running server holds DuckDB's read lock on the file, and a writer
in another process is refused by DuckDB until the server stops (one writing process or many
reading ones).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from threads_search.atlas.store import DATABASE_NAME, Atlas, open_atlas
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

    def _published_stamp(self) -> tuple:
        """What changes when another process publishes a change to the atlas."""
        stamps = []
        for name in (DATABASE_NAME, DATABASE_NAME + ".wal"):
            try:
                stat = (self.root / name).stat()
                stamps.append((name, stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                stamps.append((name, None, None))
        return tuple(stamps)

    def _open_connection(self) -> Atlas:
        return open_atlas(self.root, read_only=True)

    def current(self) -> Generation:
        """The generation matching the atlas on disk, opening a new one when it changed.

        DuckDB keeps one database instance per file path in a process, so the new state can
        only be opened once the old connection is closed: requests arriving meanwhile wait for
        the ones in flight to finish (never nest `reader()` calls). If the changed atlas cannot
        be opened (a writer holds it), the request is refused with that reason and the next
        one tries again.
        """
        stamp = self._published_stamp()
        current = self._current
        if current is not None and current.stamp == stamp:
            return current
        with self._lock:
            current = self._current
            if current is not None and current.stamp == stamp:
                return current
            if current is not None:
                current.drain_and_close()
                self._current = None
            try:
                atlas = self._open_connection()
            except AtlasError as error:
                self.last_error = str(error)
                raise
            self._opened += 1
            self._current = Generation(stamp=stamp, atlas=atlas, opened_at=time.time(), number=self._opened)
            self.last_error = None
            return self._current

    @contextlib.contextmanager
    def reader(self) -> Iterator[tuple[Atlas, Generation]]:
        """(an Atlas on a cursor of its own, its generation) for one request."""
        generation = self.current()
        while not generation._enter():  # closed between current() and here: take the new one
            generation = self.current()
        try:
            cursor = generation.atlas.connection.cursor()
            try:
                yield Atlas(root=generation.atlas.root, connection=cursor), generation
            finally:
                cursor.close()
        finally:
            generation._leave()

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.drain_and_close()
                self._current = None

