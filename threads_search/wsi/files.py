"""Atomic file writes for extraction outputs: write `name.tmp-<pid>`, then `os.replace`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def save_png(image, path: Path) -> Path:
    """Save a PIL image as PNG atomically; returns `path`."""
    with atomic_path(Path(path)) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)
