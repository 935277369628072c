"""`stl-tune status | export | report`: read a study while workers fill it (run/worker: search.py).

Every command takes --storage (default $STL_TUNE_STORAGE, else sqlite:///storage/stl-tune.db) and
prints storage URLs masked. Errors are StudyError (a UserError) that the main app prints as one line.
What they read comes from the search package's exports (stl_tune/search/__init__.py), imported
inside the commands: `stl-tune --help` does not pay for Optuna and the storage code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stl_tune import config
from stl_tune.cli.options import NameOpt, StorageOpt
from stl_tune.errors import UserError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.study import FrozenStudy
    from optuna.trial import FrozenTrial

app = typer.Typer(no_args_is_help=True, help="Inspect and export hyperparameter studies.")
console = Console()

_STATE_STYLE = {
    "COMPLETE": "green",
    "PRUNED": "yellow",
    "FAIL": "red",
    "RUNNING": "cyan",
    "WAITING": "dim",
    "stopped": "dim",
}  # stopped: told FAIL to Optuna, queued to resume (not a failure)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _trial_row(t: FrozenTrial, retries: dict[int, int]) -> list[str]:
    """A trial's row; retries: {trial number: the number of its retry}."""
    from stl_tune.search import record, retry_history
    from stl_tune.search.state import outcome

    epochs = t.user_attrs.get(record.EPOCHS_RUN_ATTR, len(t.intermediate_values))  # live trials: reports so far
    seconds = t.user_attrs.get(record.SECONDS_ATTR, t.duration.total_seconds() if t.duration else None)
    state = t.state.name
    retried = retry_history(t)
    reason = outcome.fail_reason(t)
    if state == "WAITING":  # a retry carries the attrs of the trial it retries: say which that was
        note = f"retry of trial {retried[-1]}" if retried else "queued"
    elif state == "FAIL" and reason in outcome.RESUMABLE and t.number in retries:  # stopped, not failed
        state, note = "stopped", f"stopped ({reason}), resumes as trial {retries[t.number]}"
    else:
        note = reason or t.user_attrs.get(record.STATUS_ATTR, "")
        if retried:
            note = f"{note}, retry of trial {retried[-1]}" if note else f"retry of trial {retried[-1]}"
    return [
        str(t.number),
        f"[{_STATE_STYLE.get(state, '')}]{state}[/]",
        "" if t.value is None else f"{t.value:.4f}",
        str(epochs),
        "" if seconds is None else f"{seconds:.0f}",
        str(note),
        " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
    ]


def _studies_table(storage: BaseStorage, studies: list[FrozenStudy]) -> Table:
    import optuna

    from stl_tune.search import describe, tally

    table = Table("study", "trials", "complete", "best", title=f"Studies in {describe(storage)}")
    for s in studies:
        t = tally(optuna.load_study(study_name=s.study_name, storage=storage))
        best = "" if t.best is None else f"{t.best.value:.4f}"
        table.add_row(s.study_name, str(t.trials), str(t.complete), best)
    return table


@app.command()
def status(name: NameOpt = None, storage: StorageOpt = None) -> None:
    """Trials of a study (state, value, epochs, seconds, params), the time left, its best trial and that config."""
    from stl_tune.search import (
        StudyError,
        best_confirmed,
        confirmed_ranking,
        deadline,
        describe,
        duration,
        left_or_stopped,
        load_study,
        open_storage,
        ranked,
        record,
        retry_history,
        storage_arg,
        tally,
        time_left,
    )

    store = open_storage(storage, heartbeat=False, create=False)
    try:
        study, spec = load_study(name, store)
    except StudyError:  # without --name, a storage of several studies (or none): list them
        if name is not None or len(studies := store.get_all_studies()) == 1:
            raise
        console.print(_studies_table(store, studies))
        return
    table = Table(
        "#",
        "state",
        spec.objective,
        "epochs",
        "seconds",
        "note",
        "params",
        title=f"Study '{study.study_name}' in {describe(store)}",
    )
    trials = study.get_trials(deepcopy=False)
    retries = {retry_history(t)[-1]: t.number for t in trials if retry_history(t)}
    for t in trials:
        table.add_row(*_trial_row(t, retries))
    console.print(table)
    n_trials = study.user_attrs.get(record.N_TRIALS_ATTR)
    if n_trials:  # the same figure as the live view's, from the storage alone
        finished = tally(study, trials=trials).finished
        console.print(
            f"{finished}/{n_trials} finished; {left_or_stopped(study, trials, n_trials, finished, spec, detail=True)}"
        )
    budget_left = time_left(study.user_attrs)
    if budget_left is not None:  # `run --time-budget`: no trial starts after the deadline
        spent = budget_left.total_seconds() <= 0
        console.print(
            f"time budget: {'spent' if spent else duration(budget_left.total_seconds()) + ' left'}"
            f" (deadline {deadline(study.user_attrs):%Y-%m-%d %H:%M:%S} UTC)"
        )
    _kept_line(study, spec.keep_models, storage)
    ranking = ranked(trials, study.direction)
    if not ranking:
        console.print("No complete trial yet.")
        return
    best = ranking[0]
    console.print(f"Best: trial {best.number}, {spec.objective} = {best.value:.4f}")
    confirmed = confirmed_ranking(study)
    if confirmed:  # `stl-tune confirm`: export takes the best mean
        table = Table("trial", spec.objective, "confirmed mean ± std", "seeds", title="Confirmed with new seeds")
        for number, c in confirmed:
            table.add_row(
                str(number),
                f"{trials[number].value:.4f}",
                f"{c['mean']:.4f} ± {c['std']:.4f}",
                ", ".join(map(str, c["seeds"])),
            )
        console.print(table)
        best = trials[best_confirmed(study)[0]]
        console.print(f"Best confirmed: trial {best.number}")
    if record.CONFIG_ATTR in best.user_attrs:  # only what differs from the defaults; export writes it all
        ours = config.flatten(best.user_attrs[record.CONFIG_ATTR])
        defaults = config.flatten(config.to_dict(config.TrainConfig()))
        console.print("Its config, where it differs from the defaults:")
        diff = Table("config key", "value", "default")
        for key, value in ours.items():
            if defaults.get(key) != value:
                diff.add_row(key, _fmt(value), _fmt(defaults.get(key)))
        console.print(diff)
    console.print(
        f"Export it: stl-tune export --name {study.study_name}{storage_arg(storage)} -o best.yaml", soft_wrap=True
    )


def _kept_line(study, k: int, storage: str | None) -> None:
    """What the study keeps for an ensemble (search/worker/keep.py), and where."""
    from stl_tune.search import storage_url
    from stl_tune.search.worker import keep
    from stl_tune.search.worker.session import artifacts_dir

    folder = artifacts_dir(None, storage_url(storage), study)
    console.print(keep.usage(study, folder).line(k, folder), soft_wrap=True)


@app.command()
def export(
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write.")],
    name: NameOpt = None,
    trial: Annotated[int | None, typer.Option(help="Trial number.", show_default="the best complete trial")] = None,
    storage: StorageOpt = None,
) -> None:
    """Write a trial's full config, set to train on train+validation, for `stl-tune train --config`."""
    from stl_tune.search import load_study, open_storage, write_export

    study, spec = load_study(name, open_storage(storage, heartbeat=False, create=False))
    t = write_export(study, trial, output)
    console.print(
        f"Wrote trial {t.number} of study '{study.study_name}' ({spec.objective} = {t.value:.4f}) "
        f"to {output}; train it with: stl-tune train --config {output}",
        soft_wrap=True,  # keep paths and commands whole for copying
    )


@app.command()
def report(
    out: Annotated[
        Path, typer.Option("--out", "-o", file_okay=False, help="Folder for index.html, the PNG plots and configs/.")
    ],
    name: NameOpt = None,
    storage: StorageOpt = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            help="The final training to show: `stl-tune train` output (one run's folder, or a --seeds folder) "
            "or `stl-tune ensemble` output."
        ),
    ] = None,
) -> None:
    """Write a study's report: a self-contained HTML page (opens from disk), PNG plots, best configs."""
    import optuna

    from stl_tune.report import write_report
    from stl_tune.search import describe, open_storage, resolve_study_name

    store = open_storage(storage, heartbeat=False, create=False)
    study = optuna.load_study(study_name=resolve_study_name(name, store), storage=store)
    try:
        with console.status(f"writing the report of study '{study.study_name}' to {out} (its plots take a while)"):
            page = write_report(study, out, storage=describe(store), runs=runs)
    except OSError as e:  # the folder cannot be made or written (a read-only place, a file in the way)
        raise UserError(f"cannot write the report to {out}: {e.strerror or e}") from None
    typer.echo(f"wrote {page}")
