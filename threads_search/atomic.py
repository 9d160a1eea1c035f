"""Atomic file writes: the one helper every layer uses (a leaf module: stdlib only).

A file is written under a hidden temporary sibling name, flushed to disk, then renamed over
its destination, so readers see the old file or the new one, never half of one. Temporary
names share one pattern (`TEMPORARY_MARK`), so the next writer can sweep leftovers of a
killed run.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_MARK = ".tmp-"
# Crash testing: THREADS_SEARCH_CRASH_AT=N kills this process (SIGKILL) at its N-th write boundary.
_CRASH_AT = int(os.environ.get("THREADS_SEARCH_CRASH_AT", "0") or 0)
_boundaries_passed = 0


def crash_point(label: str) -> None:
    """A write boundary (before / after a rename, a commit, a publish): where crash tests kill."""
    global _boundaries_passed
    if not _CRASH_AT:
        return
    _boundaries_passed += 1
    if _boundaries_passed == _CRASH_AT:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside `path` that marks it as temporary."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and TEMPORARY_MARK in path.name


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's) content to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds.

    The caller writes the temporary file (any library that takes a path); on success it is
    fsynced (`durable`) and renamed into place; on any failure it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        try:
            yield temporary
        except RuntimeError as error:  # libraries that write the file themselves (faiss) report a full disk so
            if "No space left on device" in str(error):
                raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
            raise
        if durable and temporary.exists():
            fsync_path(temporary)
        crash_point(f"before rename {path.name}")
        os.replace(temporary, path)
        crash_point(f"after rename {path.name}")
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload) -> Path:
    """JSON with sorted keys and an end-of-line, written atomically."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def copy_file_atomic(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy a file; a failed copy (full disk, interruption) leaves nothing at `destination`."""
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)
    return Path(destination)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory that becomes `path` only if the block succeeds.

    Refused (FileExistsError) if `path` already exists: directories are never replaced whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        for child in temporary.iterdir():
            fsync_path(child)
        crash_point(f"before rename {path.name}/")
        os.rename(temporary, path)
        crash_point(f"after rename {path.name}/")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def file_checksum(path: str | os.PathLike) -> str:
    """blake2b-128 of a file's bytes, as hex: recorded at write, verified by `check`."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
