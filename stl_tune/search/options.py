"""Command-line options that several commands share, defined once, and the settings they show.

The settings live here rather than in study.py (which reads them) so that defining the command
line imports neither Optuna nor SQLAlchemy: `stl-tune --help` stays fast.
"""

from typing import Annotated

import typer

DEFAULT_STORAGE = "sqlite:///storage/stl-tune.db"
STORAGE_ENV = "STL_TUNE_STORAGE"
HEARTBEAT_INTERVAL_S = 60  # a RUNNING trial's worker writes a heartbeat this often ...
GRACE_PERIOD_S = 180  # ... and one silent this long is failed (its worker died) and retried
HEARTBEAT_ENV = "STL_TUNE_HEARTBEAT_INTERVAL"  # overrides HEARTBEAT_INTERVAL_S (seconds)
GRACE_ENV = "STL_TUNE_GRACE_PERIOD"  # overrides GRACE_PERIOD_S (seconds)

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
