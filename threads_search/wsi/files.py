"""PNG outputs of extraction and heatmaps, written atomically."""

from __future__ import annotations

from pathlib import Path

from threads_search.atomic import atomic_path


def save_png(image, path: Path) -> Path:
    """Save a PIL image as PNG atomically; returns `path`."""
    with atomic_path(Path(path)) as temporary:
        image.save(temporary, format="PNG")
    return Path(path)
