"""The command-line options of more than one command, each defined once as an `Annotated` alias
(typer's idiom), with their help. Only settings are imported here (search/settings.py), no Optuna or
SQLAlchemy: `stl-tune --help` stays fast."""

from pathlib import Path
from typing import Annotated

import typer

from stl_tune.search.settings import ARTIFACTS_ENV, DEFAULT_STORAGE, STORAGE_ENV

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

# The worker options of run, worker and confirm (search/worker/session.py's WorkerOptions).
Trials = Annotated[
    int | None,
    typer.Option(
        "--trials",
        min=1,
        help="Finished (complete or pruned) trials the study should have, counting those it has; required for a new study.",
        show_default="the study's stored budget",
    ),
]
Gpus = Annotated[
    str, typer.Option(help="GPUs to use: all, none, or indices like 0,1 (all on a machine without GPUs: CPU workers).")
]
PerGpu = Annotated[int, typer.Option(min=1, help="Worker processes (trials at once) per GPU.")]
Workers = Annotated[int | None, typer.Option(min=1, help="CPU worker processes when no GPU is used.", show_default="1")]
DataDir = Annotated[Path | None, typer.Option(help="Dataset folder on this host (sets data.dir for every trial).")]
Artifacts = Annotated[
    Path | None,
    typer.Option(
        help="Checkpoint folder; workers on several hosts need one shared folder (e.g. NFS) at this path.",
        show_default=f"${ARTIFACTS_ENV}, else the study's, else artifacts/ next to the SQLite file",
    ),
]
MaxFailures = Annotated[int, typer.Option(min=1, help="Stop when this many trials in a row have failed.")]
