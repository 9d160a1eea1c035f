"""Terminal rendering shared by the commands: progress bars, warnings, simple tables."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import typer


@contextlib.contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A `progress(done, total, item)` callback drawing a bar on stderr (nothing when quiet)."""
    if quiet or not sys.stderr.isatty() and not _force_bar():
        yield lambda done, total, item: None
        return
    state: dict = {}

    def update(done: int, total: int, item: str) -> None:
        if "bar" not in state:
            state["bar"] = typer.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            state["bar"].__enter__()
            state["done"] = 0
        state["bar"].update(done - state["done"])
        state["done"] = done

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)


def _force_bar() -> bool:
    import os

    return os.environ.get("THREADS_SEARCH_PROGRESS") == "1"


def warn(lines: list[str]) -> None:
    for line in lines:
        typer.echo(f"warning: {line}", err=True)


def table(rows: list[list], header: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in header]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
