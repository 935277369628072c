"""Command-line options that several commands share, defined once."""

from typing import Annotated

import typer

from stl_tune.search.study import DEFAULT_STORAGE, STORAGE_ENV

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Optuna storage URL, e.g. postgresql+psycopg://user:pass@host/db or grpc://host:port.",
        show_default=f"${STORAGE_ENV}, else {DEFAULT_STORAGE}",
    ),
]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Study name; may be left out when the storage holds one study.")
]
