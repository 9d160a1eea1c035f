"""Published generations: how readers see an atlas that a writer is changing.

The one writer works on `atlas.duckdb`. When it commits, it publishes: the database is
checkpointed and copied to `published/<generation>.duckdb`, then the small file `CURRENT`
is replaced atomically to point at it. Readers (searches, `eval`, `info`, the service) read
`CURRENT` and open that copy read-only: they never touch `atlas.duckdb`, so they never wait
for a writer and a writer never waits for them. Every other file of the atlas is immutable
once recorded (new names for new content), so a generation stays whole while it is read.

When the writer closes, files that no retained generation references (leftovers of killed
runs, replaced index files, removed copies) and temporary files of dead processes are deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from threads_search.atlas.layout import DATABASE_NAME, FOLDERS, PATCH_INDEX_SUFFIXES
from threads_search.atomic import TEMPORARY_MARK, atomic_path, is_temporary, write_json_atomic

CURRENT_NAME = "CURRENT"
PUBLISHED_FOLDER = "published"
# A generation stays readable this long after a newer one is published (long evals, open pages) ...
RETAIN_SECONDS = 600
# ... and the newest ones always.
RETAIN_NEWEST = 2


def read_current(root: Path) -> dict | None:
    """The published state a reader should open, or None for an atlas never published."""
    try:
        return json.loads((root / CURRENT_NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None


def current_generation(root: Path) -> int:
    current = read_current(root)
    return int(current["generation"]) if current else 0


def publish(connection, root: Path, command: str, commits: str) -> int:
    """Checkpoint the writer's database and publish a copy of it as the next generation."""
    connection.execute("CHECKPOINT")
    generation = current_generation(root) + 1
    relative = f"{PUBLISHED_FOLDER}/{generation:08d}.duckdb"
    with atomic_path(root / relative) as temporary:
        shutil.copyfile(root / DATABASE_NAME, temporary)
    write_json_atomic(root / CURRENT_NAME, {"generation": generation, "database": relative,
                                            "published_at": time.time(), "by": command, "commits": commits})
    return generation


def published_database(root: Path) -> tuple[Path, int] | None:
    current = read_current(root)
    if not current:
        return None
    return root / current["database"], int(current["generation"])


def retained_generations(root: Path, now: float | None = None) -> list[Path]:
    """Published copies still to be kept: the newest few, and any published recently."""
    folder = root / PUBLISHED_FOLDER
    if not folder.is_dir():
        return []
    copies = sorted(p for p in folder.glob("*.duckdb") if not is_temporary(p))
    now = time.time() if now is None else now
    keep = set(copies[-RETAIN_NEWEST:])
    keep.update(p for p in copies if now - p.stat().st_mtime < RETAIN_SECONDS)
    return sorted(keep)


def referenced_files(connection) -> set[str]:
    """Paths (relative to the atlas) that one database's tables point at.

    Also for published copies of older formats, which may lack the tables later versions added.
    """
    tables = {row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    referenced: set[str] = set()
    queries = {"models": "SELECT path FROM models", "embeddings": "SELECT part FROM embeddings",
               "profile_batches": "SELECT parquet FROM profile_batches", "slides": "SELECT path FROM slides WHERE copied"}
    for table, query in queries.items():
        if table in tables:
            referenced.update(row[0] for row in connection.execute(query).fetchall())
    if "indexes" in tables:
        for (stem,) in connection.execute("SELECT path FROM indexes").fetchall():
            referenced.update((stem + ".faiss", stem + ".json"))
    if "patch_indexes" in tables:
        for (stem,) in connection.execute("SELECT path FROM patch_indexes").fetchall():
            referenced.update(stem + suffix for suffix in PATCH_INDEX_SUFFIXES)
    if "index_shards" in tables:
        for (stem,) in connection.execute("SELECT path FROM index_shards WHERE path IS NOT NULL").fetchall():
            referenced.update((stem + ".faiss", stem + ".json"))
    return referenced


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporary_owner(path: Path) -> int | None:
    try:
        return int(path.name.split(TEMPORARY_MARK, 1)[1].split("-", 1)[0])
    except (IndexError, ValueError):
        return None


def collect_garbage(connection, root: Path, dry_run: bool = False) -> list[Path]:
    """Delete what no retained generation references and temporaries of dead processes; returns them.

    With `dry_run` nothing is deleted (what would be is returned)."""
    import duckdb

    referenced = referenced_files(connection)
    retained = retained_generations(root)
    for copy in retained:
        try:
            reader = duckdb.connect(str(copy), read_only=True)
        except duckdb.Error:
            continue  # a damaged copy references nothing; `check` reports it
        try:
            referenced |= referenced_files(reader)
        finally:
            reader.close()
    keep = referenced | {str(p.relative_to(root)) for p in retained}
    removed: list[Path] = []
    for folder in (*FOLDERS, PUBLISHED_FOLDER):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if not path.exists():
                continue
            relative = str(path.relative_to(root))
            if is_temporary(path):
                if not _abandoned(path):
                    continue
            elif path.is_dir():
                if any(path.iterdir()) or _inside(relative, keep):
                    continue
            elif relative in keep or _inside(relative, keep):
                continue
            removed.append(path)
            if dry_run:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    for temporary in root.glob(f".*{TEMPORARY_MARK}*"):
        if _abandoned(temporary):
            removed.append(temporary)
            if not dry_run:
                temporary.unlink(missing_ok=True)
    return removed


def _abandoned(path: Path) -> bool:
    """A temporary file of a process that is gone (or of this one, which has finished writing)."""
    owner = _temporary_owner(path)
    return owner is None or owner == os.getpid() or not _pid_alive(owner)


def _inside(relative: str, referenced: set[str]) -> bool:
    """A file inside a referenced folder (a model's files), or a folder holding referenced files."""
    parts = Path(relative).parts
    for depth in range(1, len(parts)):
        if str(Path(*parts[:depth])) in referenced:
            return True
    prefix = relative.rstrip("/") + "/"
    return any(r.startswith(prefix) for r in referenced)
