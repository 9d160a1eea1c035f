"""The atlas: one self-describing folder holding `atlas.duckdb`, Parquet files, models and indexes.

`Atlas` wraps the DuckDB connection; only modules of this package run SQL on it. Every table
change happens in one transaction (`with atlas.transaction():`); every file is written under a
temporary name and renamed into place before the transaction that references it commits, so an
interrupted command leaves the atlas as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from threads_search import __version__
from threads_search.atlas.layout import DATABASE_NAME, FOLDERS
from threads_search.atlas.schema import CORE_ITEM_COLUMNS, FORMAT_VERSION, SCHEMA, migrate
from threads_search.atomic import crash_point, temporary_sibling
from threads_search.errors import AtlasBusyError, AtlasDamagedError, AtlasError

# While a writer runs, what it has committed is published at most this often (and always at its end).
PUBLISH_INTERVAL_S = 10.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def quote_identifier(name: str) -> str:
    """SQL identifier quoting, so metadata columns may carry any name a CSV header has."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Rows:
    """A statement's rows, fully fetched."""

    rows: list[tuple]
    columns: list[str]

    def fetchall(self) -> list[tuple]:
        return self.rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None


@dataclass
class Atlas:
    """An open atlas: its root folder and a DuckDB connection.

    Use `open_atlas` / `init_atlas`, and `with atlas.transaction():` around every change.
    """

    root: Path
    connection: "object"
    read_only: bool = False
    generation: int = 0  # the published generation a reader sees (0: the writer's live database)
    _cache: dict = field(default_factory=dict, repr=False)  # what was read from this generation's tables
    _files: dict = field(default_factory=dict, repr=False)  # opened immutable files (indexes, parts): any generation
    _dirty: bool = field(default=False, repr=False)
    _published_at: float = field(default=0.0, repr=False)

    def path(self, relative: str | os.PathLike) -> Path:
        return self.root / relative

    def sql(self, query: str, parameters: list | tuple | None = None) -> Rows:
        """Run one statement and materialise its rows (DuckDB refuses new work while a result is open)."""
        with self._damage_is_one_line():
            cursor = self.connection.execute(query, parameters or [])
            description = cursor.description
            return Rows(cursor.fetchall() if description else [], [d[0] for d in description or []])

    def arrow(self, query: str, parameters: list | tuple | None = None):
        """One statement's result as a pyarrow Table."""
        with self._damage_is_one_line():
            return self.connection.sql(query, params=parameters or None).to_arrow_table()

    @contextlib.contextmanager
    def _damage_is_one_line(self) -> Iterator[None]:
        import duckdb

        try:
            yield
        except (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException) as error:
            if "No space left on device" in str(error) or "Disk full" in str(error):
                raise OSError(errno.ENOSPC, "No space left on device", str(self.root / DATABASE_NAME)) from None
            database = DATABASE_NAME if not self.read_only else f"published generation {self.generation}"
            raise AtlasDamagedError(f"{self.root / DATABASE_NAME if not self.read_only else self.root}: {database} is damaged "
                                    f"({str(error).splitlines()[0][:160]}); run `threads-search check {self.root} --repair`") from None

    @contextlib.contextmanager
    def registered(self, name: str, table) -> Iterator[None]:
        """A pyarrow table visible to SQL as `name` for the block (bulk inserts, id sets)."""
        self.connection.register(name, table)
        try:
            yield
        finally:
            self.connection.unregister(name)

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.sql("SELECT value FROM atlas_meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.sql("INSERT OR REPLACE INTO atlas_meta VALUES (?, ?)", [key, value])

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Atlas"]:
        self.sql("BEGIN TRANSACTION")
        try:
            yield self
        except BaseException:
            self.sql("ROLLBACK")
            self._cache.clear()
            raise
        self.sql("INSERT OR REPLACE INTO atlas_meta SELECT 'commits', CAST(coalesce(max(CAST(value AS BIGINT)), 0) + 1 "
                 "AS VARCHAR) FROM atlas_meta WHERE key = 'commits'")
        crash_point("before commit")
        self.sql("COMMIT")
        crash_point("after commit")
        self._cache.clear()
        self._dirty = True
        if time.monotonic() - self._published_at > PUBLISH_INTERVAL_S:
            self.publish()

    def publish(self) -> None:
        """Make what this writer committed visible to readers (a new published generation)."""
        from threads_search.atlas.generations import publish

        if self.read_only:
            return
        publish(self.connection, self.root, " ".join(["threads-search", *sys.argv[1:]])[:300], self.meta("commits", "0"))
        self._dirty, self._published_at = False, time.monotonic()

    def refresh(self) -> bool:
        """A reader: move to the newest published generation if there is one; True if it moved."""
        from threads_search.atlas.generations import current_generation

        if not self.read_only or current_generation(self.root) == self.generation:
            return False
        newer = open_atlas(self.root, read_only=True)
        self.connection.close()
        self.connection, self.generation = newer.connection, newer.generation
        self._cache.clear()
        self._files.clear()  # indexes of the new generation are mapped again (milliseconds)
        return True

    def cached(self, key, build):
        """`build()` once per generation of the tables (forgotten when they change)."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def peek(self, key):
        """What `cached` holds for `key` in this generation, or None (nothing is built)."""
        return self._cache.get(key)

    def cached_file(self, key, build):
        """`build()` once per opened atlas, for files that never change once recorded (named by content)."""
        if key not in self._files:
            self._files[key] = build()
        return self._files[key]

    def view(self) -> "Atlas":
        """A reader's second handle for another thread: its own DuckDB cursor, the same caches.

        Close the view (its cursor) when done; the caches stay with the atlas it came from.
        """
        if not self.read_only:
            raise AtlasError("views are for readers (open_atlas(..., read_only=True))")
        return Atlas(root=self.root, connection=self.connection.cursor(), read_only=True, generation=self.generation,
                     _cache=self._cache, _files=self._files)

    def invalidate(self) -> None:
        """Forget what was read (columns, id sets, filter results): the tables changed."""
        self._cache.clear()

    def item_columns(self) -> list[str]:
        """Every column of `items`: the core ones first, then metadata columns in creation order."""
        if "columns" not in self._cache:
            rows = self.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'items' "
                            "ORDER BY column_index").fetchall()
            self._cache["columns"] = [r[0] for r in rows]
        return list(self._cache["columns"])

    def metadata_columns(self) -> list[str]:
        return [c for c in self.item_columns() if c not in CORE_ITEM_COLUMNS]

    def filter_columns(self) -> list[str]:
        """The columns a filter may name: every item column but the vector id."""
        return [c for c in self.item_columns() if c != "vid"]

    def _items_for_filters(self):
        if "items_arrow" not in self._cache:
            self._cache["items_arrow"] = self.arrow("SELECT * FROM items")
        return self._cache["items_arrow"]

    def modality_vids(self, modality: str) -> np.ndarray:
        """Sorted int64 vector ids of one modality's items."""
        key = ("vids", modality)
        if key not in self._cache:
            # fetchnumpy, not Arrow: a one-off CLI search then never imports pyarrow (30-45 ms).
            with self._damage_is_one_line():
                column = self.connection.execute("SELECT vid FROM items WHERE modality = ? ORDER BY vid",
                                                 [modality]).fetchnumpy()["vid"]
            self._cache[key] = np.ascontiguousarray(column, dtype=np.int64)
        return self._cache[key]

    def filter_vids(self, where, modality: str) -> np.ndarray:
        """Sorted int64 vids of `modality` items that satisfy a validated `Where` (all for None)."""
        if where is None:
            return self.modality_vids(modality)
        from threads_search.atlas.where import evaluate_where

        key = ("where", where.statement)
        if key not in self._cache:
            self._cache[key] = evaluate_where(where, self._items_for_filters(), self.filter_columns())
        vids, modalities = self._cache[key]
        return vids[modalities == modality]

    def close(self) -> None:
        if self.read_only:
            self.connection.close()
            return
        from threads_search.atlas import lock
        from threads_search.atlas.generations import collect_garbage, read_current

        try:
            with self._damage_is_one_line():
                current = read_current(self.root)
                # Also publish what a killed writer committed but never published.
                if self._dirty or current is None or str(current.get("commits")) != self.meta("commits", "0"):
                    self.publish()
                if lock.holders_here(self.root) == 1:
                    collect_garbage(self.connection, self.root)
        finally:
            self.connection.close()
            lock.release(self.root)

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.close()
        except Exception:
            if error is None:
                raise  # otherwise the block's own error is the one to report


def init_atlas(root: str | os.PathLike) -> Atlas:
    """Create an empty atlas folder (refused if one already exists there)."""
    import duckdb

    root = Path(root)
    database = root / DATABASE_NAME
    if database.exists():
        raise AtlasError(f"{root}: an atlas already exists here")
    if root.exists() and not root.is_dir():
        raise AtlasError(f"{root}: exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        raise AtlasError(f"{root}: folder is not empty and holds no atlas; choose an empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    for sub in FOLDERS:
        (root / sub).mkdir(exist_ok=True)
    # Build the database under a temporary name so a half-made atlas is never mistaken for one.
    temporary = temporary_sibling(database)
    connection = duckdb.connect(str(temporary))
    connection.execute(SCHEMA)
    connection.execute("INSERT INTO atlas_meta VALUES ('format_version', '1'), ('created_at', ?), ('created_by', ?)",
                       [utc_now().isoformat(), f"threads-search {__version__}"])
    migrate(connection, 1)
    connection.close()
    os.replace(temporary, database)
    return open_atlas(root)


def open_atlas(root: str | os.PathLike, read_only: bool = False, lock_timeout: float | None = None) -> Atlas:
    """Open an existing atlas; a folder without `atlas.duckdb` is refused.

    `read_only`: a reader, on the newest published generation (never blocked by a writer).
    Otherwise the one writer: takes the writer lock (waiting up to `lock_timeout` seconds).
    """
    root = Path(root)
    database = root / DATABASE_NAME
    if not root.exists():
        raise AtlasError(f"{root}: no such atlas folder (create one with `threads-search init {root}`)")
    if not database.is_file():
        raise AtlasError(f"{root}: not an atlas (no {DATABASE_NAME}; create one with `threads-search init`)")
    root = root.resolve()
    if read_only:
        return _open_reader(root)
    from threads_search.atlas import lock

    lock.acquire(root, lock_timeout)
    try:
        connection = _connect(database, read_only=False)
        version = _format_version(connection, database)
        migrated = version < FORMAT_VERSION
        if migrated:
            connection.execute("BEGIN TRANSACTION")
            migrate(connection, version)
            connection.execute("COMMIT")
    except BaseException:
        lock.release(root)
        raise
    return Atlas(root=root, connection=connection, read_only=False, _dirty=migrated)


def _open_reader(root: Path) -> Atlas:
    from threads_search.atlas.generations import published_database

    for _ in range(5):  # a generation may be retired between reading CURRENT and opening it
        published = published_database(root)
        if published is None:  # never published (made by an older version): the database itself
            connection = _connect(root / DATABASE_NAME, read_only=True)
            generation = 0
        elif not published[0].is_file():
            continue
        else:
            connection = _connect(published[0], read_only=True)
            generation = published[1]
        version = _format_version(connection, published[0] if published else root / DATABASE_NAME)
        if version < FORMAT_VERSION:
            connection.close()
            raise AtlasError(f"{root}: atlas format {version} is older than {FORMAT_VERSION}; run a writing command "
                             f"(e.g. `threads-search check {root} --repair`) to migrate it")
        return Atlas(root=root, connection=connection, read_only=True, generation=generation)
    raise AtlasDamagedError(f"{root}: CURRENT points at a published generation that is missing; "
                            f"run `threads-search check {root} --repair`")


def _connect(database: Path, read_only: bool):
    import duckdb

    try:
        return duckdb.connect(str(database), read_only=read_only)
    except duckdb.IOException as error:
        message = str(error).splitlines()[0]
        if "lock" in message.lower():
            raise AtlasBusyError(f"{database}: in use by another process ({message})") from None
        raise AtlasDamagedError(f"{database}: not a readable atlas database ({message}); "
                                f"run `threads-search check {database.parent} --repair`") from None
    except duckdb.Error as error:
        raise AtlasDamagedError(f"{database}: not a readable atlas database ({str(error).splitlines()[0]}); "
                                f"run `threads-search check {database.parent} --repair`") from None


def _format_version(connection, database: Path) -> int:
    import duckdb

    try:
        rows = connection.execute("SELECT value FROM atlas_meta WHERE key = 'format_version'").fetchall()
    except duckdb.Error as error:
        connection.close()
        raise AtlasDamagedError(f"{database}: not a readable atlas database ({str(error).splitlines()[0]}); "
                                f"run `threads-search check {database.parent} --repair`") from None
    value = rows[0][0] if rows else None
    if value is None or not str(value).isdigit() or int(value) > FORMAT_VERSION:
        connection.close()
        raise AtlasError(f"{database}: atlas format {value or '?'} is not supported "
                         f"(this threads-search {__version__} reads format {FORMAT_VERSION})")
    return int(value)
