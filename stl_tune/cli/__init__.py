"""The `stl-tune` command line: a typer app per group of commands, each command a few lines that
call into the package. Heavy imports (torch, Optuna, SQLAlchemy) happen inside the commands, so
`stl-tune --help` stays fast.

    train.py    train, evaluate, predict, data fake
    search.py   run, worker, confirm (each a call into stl_tune/search/worker/session.py)
    views.py    status, export, report
    ensemble.py ensemble: the final model as an ensemble of a search's trials
    serve.py    dashboard, proxy
    options.py  the options of more than one command, defined once
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from stl_tune.cli import ensemble, search, serve, train, views
from stl_tune.errors import UserError


class _Group(TyperGroup):
    """Bad input (UserError) becomes one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Hyperparameter search and final training for STL-10 and other small image datasets.",
)
for group in (search, views, ensemble, serve, train):
    app.add_typer(group.app)


def _print_version(value: bool) -> None:
    if value:
        from stl_tune import __version__

        typer.echo(f"stl-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass
