"""The `threads-search` command line: one thin command per verb, registered in one place.

Command modules import nothing heavy at module level, so `--help` stays fast.
"""

from __future__ import annotations

import errno
import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from threads_search import __version__
from threads_search.errors import ThreadsSearchError

CONTEXT = {"help_option_names": ["-h", "--help"]}


class _BareHelpFlag:
    """Shows -h/--help as the flag it is (no type column) in every command's help."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Command(_BareHelpFlag, TyperCommand):
    pass


class _Group(_BareHelpFlag, TyperGroup):
    pass


class _OneLineErrors(_Group):
    """Turns a ThreadsSearchError or a usage error (bad choice, missing option) anywhere below
    into one line on stderr and exit code 2, and a failure of the environment (OSError: disk
    full, permission denied) into one line and exit code 1."""

    def invoke(self, ctx):
        from typer._click.exceptions import NoArgsIsHelpError, UsageError

        try:
            return super().invoke(ctx)
        except ThreadsSearchError as error:
            typer.echo(f"error: {error}", err=True)
            sys.exit(2)
        except NoArgsIsHelpError:
            raise
        except OSError as error:  # the environment failed (disk full, permissions): the atlas is as it was
            if error.errno == errno.EPIPE:
                raise
            where = f" ({error.filename})" if error.filename else ""
            typer.echo(f"error: {error.strerror or error}{where}; every write is all-or-nothing: re-run the command "
                       f"once this is fixed and it resumes where it stopped", err=True)
            sys.exit(1)
        except UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "threads-search"
            message = " ".join(error.format_message().split())
            typer.echo(f"error: {command}: {message} (see {command} -h)", err=True)
            sys.exit(2)


app = typer.Typer(cls=_OneLineErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  context_settings=CONTEXT,
                  help="Slide and molecular-profile retrieval after THREADS: ingest, train, embed, index, search, evaluate.")
ingest_app = typer.Typer(cls=_Group, no_args_is_help=True, context_settings=CONTEXT,
                         help="Bring patch features, expression or mutations into an atlas.")
app.add_typer(ingest_app, name="ingest")


def _show_version(shown: bool) -> None:
    if shown:
        typer.echo(f"threads-search {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", metavar="",
                                       callback=_show_version, is_eager=True)) -> None:
    """Slide and molecular-profile retrieval after THREADS: ingest, train, embed, index, search, evaluate."""


def _register() -> None:
    from threads_search.cli import (atlas_commands, demo_commands, eval_commands, extract, ingest_commands, model_commands,
                                    search_commands, serve_commands, train_command)

    commands = {
        app: [("demo", demo_commands.demo), ("init", atlas_commands.init), ("info", atlas_commands.info),
              ("remove", atlas_commands.remove), ("check", atlas_commands.check), ("extract", extract.extract), ("train", train_command.train),
              ("embed", model_commands.embed), ("index", model_commands.index), ("search", search_commands.search),
              ("prototypes", search_commands.prototypes), ("classify", search_commands.classify),
              ("eval", eval_commands.evaluate), ("fewshot", eval_commands.fewshot), ("heatmap", extract.heatmap),
              ("serve", serve_commands.serve)],
        ingest_app: [("slides", ingest_commands.slides), ("expression", ingest_commands.expression),
                     ("mutations", ingest_commands.mutations), ("slide-embeddings", ingest_commands.slide_embeddings)],
    }
    for group, entries in commands.items():
        for name, function in entries:
            group.command(name, cls=_Command, context_settings=CONTEXT)(function)


_register()


# Commands that answer one query do no matrix products with numpy, yet numpy's import starts an
# OpenBLAS thread team per core: 60-100 ms of a one-off `search` on a busy two-core machine
# (benchmarks/README.md, "Query path"). A value the user set is kept.
ONE_QUERY_COMMANDS = frozenset({"search", "info"})


def single_threaded_blas_for(argv: list[str]) -> bool:
    """Set OPENBLAS_NUM_THREADS=1 (if unset) when `argv` runs a one-query command; before numpy loads."""
    if len(argv) > 1 and argv[1] in ONE_QUERY_COMMANDS and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        return True
    return False


def main() -> None:
    single_threaded_blas_for(sys.argv)
    app()
