"""`stl-tune run` (create or continue a study and run its workers), `stl-tune worker` (join a study
from any host) and `stl-tune confirm` (re-train the best trials with new seeds): the options, and one
call each into search/worker/session.py, which does the work. `run` starts its worker processes as
`python -m stl_tune worker --launched ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stl_tune.cli.options import Artifacts, DataDir, Gpus, MaxFailures, NameOpt, PerGpu, StorageOpt, Trials, Workers

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)

Study = Annotated[
    Path | None,
    typer.Option("--study", help="Study file (search space, sampler, pruner).", show_default="studies/seed.yaml"),
]
Name = Annotated[str | None, typer.Option(help="Study name.", show_default="the study file's name")]
Enqueue = Annotated[
    list[Path] | None,
    typer.Option("--enqueue", help="A config YAML (e.g. an export) to try next, run to full length (repeatable)."),
]
TimeBudget = Annotated[
    str | None,
    typer.Option(
        help="Stop starting trials after this long, e.g. 90s, 45m, 6h, on every host; trials running then pause and resume on the next run.",
        show_default="the study file's time_budget, else none",
    ),
]
Patience = Annotated[
    int | None,
    typer.Option(
        "--patience-trials", min=1, help="Stop when this many finished trials in a row did not beat the best."
    ),
]
FromStudy = Annotated[
    str | None,
    typer.Option(
        "--from-study",
        help="Copy the finished trials of this study (same storage) whose parameters fit the new space, so the sampler starts warm.",
    ),
]


@app.command()
def run(
    study_file: Study = None,
    name: Name = None,
    trials: Trials = None,
    storage: StorageOpt = None,
    gpus: Gpus = "all",
    workers_per_gpu: PerGpu = 1,
    workers: Workers = None,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
    max_failures: MaxFailures = 5,
    enqueue: Enqueue = None,
    time_budget: TimeBudget = None,
    patience_trials: Patience = None,
    from_study: FromStudy = None,
) -> None:
    """Create (or continue) a study and run its trials in one worker process per GPU slot.

    A new study's first trial is the known recipe (the config defaults), run to full length."""
    from stl_tune.search.worker import session

    options = session.WorkerOptions(gpus, workers_per_gpu, workers, data_dir, artifacts, max_failures)
    raise typer.Exit(
        session.run(
            study_file,
            name=name,
            n_trials=trials,
            storage=storage,
            options=options,
            enqueue=enqueue or [],
            time_budget=time_budget,
            patience=patience_trials,
            from_study=from_study,
        )
    )


@app.command()
def worker(
    name: Annotated[str, typer.Option(help="The study to join (created by `stl-tune run`).")],
    storage: StorageOpt = None,
    gpus: Gpus = "all",
    workers_per_gpu: PerGpu = 1,
    workers: Workers = None,
    trials: Trials = None,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
    max_failures: MaxFailures = 5,
    worker_index: Annotated[
        int, typer.Option(min=0, help="Offsets the sampler's seed: give workers on different hosts different values.")
    ] = 0,
    launched: Annotated[bool, typer.Option(hidden=True, help="Started by run's launcher: the loop only.")] = False,
    epoch_lines: Annotated[
        bool | None, typer.Option(hidden=True, help="A line per epoch.", show_default="without a terminal")
    ] = None,
) -> None:
    """Join an existing study from any host: work on it until its budget is reached."""
    from stl_tune.search.worker import session

    options = session.WorkerOptions(gpus, workers_per_gpu, workers, data_dir, artifacts, max_failures)
    raise typer.Exit(
        session.worker(name, storage, options, trials, worker_index, launched=launched, epoch_lines=epoch_lines)
    )


@app.command()
def confirm(
    name: NameOpt = None,
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Candidates: the study's best K complete trials.")] = 3,
    seeds: Annotated[
        int, typer.Option(min=1, help="New seeds per candidate (each also draws a new validation split).")
    ] = 3,
    gpus: Gpus = "all",
    workers_per_gpu: PerGpu = 1,
    workers: Workers = None,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
    max_failures: MaxFailures = 5,
) -> None:
    """Re-train the best K trials with S new seeds (study NAME.confirm, same workers), then rank them by mean."""
    from stl_tune.search.worker import session

    options = session.WorkerOptions(gpus, workers_per_gpu, workers, data_dir, artifacts, max_failures)
    raise typer.Exit(session.confirm(name, storage, top, seeds, options))
