"""The `threads-search` command line: one thin command per verb, registered in one place.

Command modules import nothing heavy at module level, so `--help` stays fast.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from threads_search.errors import ThreadsSearchError


class _OneLineErrors(TyperGroup):
    """Turns a ThreadsSearchError anywhere below into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ThreadsSearchError as error:
            typer.echo(f"error: {error}", err=True)
            sys.exit(2)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Slide and molecular-profile retrieval after THREADS: ingest, train, embed, index, search, evaluate.")
ingest_app = typer.Typer(no_args_is_help=True, help="Bring patch features, expression or mutations into an atlas.")
app.add_typer(ingest_app, name="ingest")


def _register() -> None:
    from threads_search.cli import atlas_commands, eval_commands, extract, ingest_commands, model_commands, search_commands

    app.command("init")(atlas_commands.init)
    app.command("info")(atlas_commands.info)
    ingest_app.command("slides")(ingest_commands.slides)
    ingest_app.command("expression")(ingest_commands.expression)
    ingest_app.command("mutations")(ingest_commands.mutations)
    app.command("train")(model_commands.train)
    app.command("embed")(model_commands.embed)
    app.command("index")(model_commands.index)
    app.command("search")(search_commands.search)
    app.command("prototypes")(search_commands.prototypes)
    app.command("classify")(search_commands.classify)
    app.command("eval")(eval_commands.evaluate)
    app.command("fewshot")(eval_commands.fewshot)
    from threads_search.cli import demo_commands

    app.command("demo")(demo_commands.demo)
    app.command("extract")(extract.extract)
    app.command("heatmap")(extract.heatmap)
    from threads_search.cli import serve_commands

    app.command("serve")(serve_commands.serve)


_register()


def main() -> None:
    app()
