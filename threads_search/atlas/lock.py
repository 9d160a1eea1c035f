"""One writer at a time: an exclusive lock on `ATLAS/.writer.lock`, naming its holder.

A second writer waits up to `timeout` seconds, then gets one line naming the holder (pid,
command, since). The lock is the kernel's (flock): a killed writer releases it by dying, so a
stale lock never blocks anyone. Readers never take it (they read published generations).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from threads_search.errors import AtlasBusyError

LOCK_NAME = ".writer.lock"
DEFAULT_TIMEOUT_S = float(os.environ.get("THREADS_SEARCH_LOCK_TIMEOUT", "30"))
_POLL_S = 0.05
# root -> (WriterLock, holders in this process): nested opens in one process share the lock.
_HELD: dict[Path, list] = {}


@dataclass
class WriterLock:
    path: Path
    descriptor: int


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} (`{info.get('command', '?')}`, since {since})"


def acquire(root: Path, timeout: float | None = None) -> WriterLock:
    """Take the writer lock of the atlas at `root` (re-entrant within a process)."""
    root = Path(root).resolve()
    if root in _HELD:
        _HELD[root][1] += 1
        return _HELD[root][0]
    path = root / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + (DEFAULT_TIMEOUT_S if timeout is None else timeout)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise AtlasBusyError(f"{root}: being written by {_holder(path)}; run this again when it has finished "
                                     f"(or set THREADS_SEARCH_LOCK_TIMEOUT to wait longer)") from None
            time.sleep(_POLL_S)
    record = {"pid": os.getpid(), "command": " ".join(["threads-search", *sys.argv[1:]])[:300], "since": time.time()}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    lock = WriterLock(path, descriptor)
    _HELD[root] = [lock, 1]
    return lock


def release(root: Path) -> None:
    root = Path(root).resolve()
    entry = _HELD.get(root)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[root]
        os.ftruncate(entry[0].descriptor, 0)
        fcntl.flock(entry[0].descriptor, fcntl.LOCK_UN)
        os.close(entry[0].descriptor)


def holders_here(root: Path) -> int:
    """How many open atlases of this process share the lock of `root` (0 when not held)."""
    entry = _HELD.get(Path(root).resolve())
    return entry[1] if entry else 0
