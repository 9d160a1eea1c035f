"""The `threads-search` command line: one thin command per verb."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Slide and molecular-profile retrieval after THREADS.")


def main() -> None:
    app()
