"""`stl-tune run` (create or continue a study and run its workers) and `stl-tune worker` (join a
study from any host); `run` starts its worker processes as `python -m stl_tune worker ...`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from stl_tune.errors import UserError
from stl_tune.search.options import NameOpt, StorageOpt

app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False)

Study = Annotated[Path | None, typer.Option("--study", help="Study file (search space, sampler, pruner).", show_default="studies/seed.yaml")]
Name = Annotated[str | None, typer.Option(help="Study name.", show_default="the study file's name")]
Trials = Annotated[int | None, typer.Option("--trials", min=1, help="Finished (complete or pruned) trials the study should have, counting those it has; required for a new study.", show_default="the study's stored budget")]
Gpus = Annotated[str, typer.Option(help="GPUs to use: all, none, or indices like 0,1 (all on a machine without GPUs: CPU workers).")]
PerGpu = Annotated[int, typer.Option(min=1, help="Worker processes (trials at once) per GPU.")]
Workers = Annotated[int | None, typer.Option(min=1, help="CPU worker processes when no GPU is used.", show_default="1")]
DataDir = Annotated[Path | None, typer.Option(help="Dataset folder on this host (sets data.dir for every trial).")]
Artifacts = Annotated[Path | None, typer.Option(help="Checkpoint folder; workers on several hosts need one shared folder (e.g. NFS) at this path.", show_default="$STL_TUNE_ARTIFACTS, else the study's, else artifacts/ next to the SQLite file")]
MaxFailures = Annotated[int, typer.Option(min=1, help="Stop when this many trials in a row have failed.")]
Enqueue = Annotated[list[Path] | None, typer.Option("--enqueue", help="A config YAML (e.g. an export) to try next, run to full length (repeatable).")]
TimeBudget = Annotated[str | None, typer.Option(help="Stop starting trials after this long, e.g. 90s, 45m, 6h, on every host; trials running then pause and resume on the next run.", show_default="the study file's time_budget, else none")]
Patience = Annotated[int | None, typer.Option("--patience-trials", min=1, help="Stop when this many finished trials in a row did not beat the best.")]
FromStudy = Annotated[str | None, typer.Option("--from-study", help="Copy the finished trials of this study (same storage) whose parameters fit the new space, so the sampler starts warm.")]


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
    from stl_tune import config as C
    from stl_tune.search import budget as B
    from stl_tune.search import launch as L
    from stl_tune.search import study as S
    from stl_tune.search import warmstart
    from stl_tune.search.space import default_study_file, load_study_file
    from stl_tune.search.trials import N_TRIALS_ATTR

    quiet_optuna()
    study_file = study_file if study_file is not None else default_study_file()
    spec = load_study_file(study_file)
    slots = L.plan_slots(gpus, workers_per_gpu, workers)  # every check before the study is created
    deadline = B.parse_duration(time_budget or spec.time_budget) if (time_budget or spec.time_budget) else None
    queued = [C.load(path) for path in enqueue or []]  # a bad file is refused before anything is made
    _prepare_data(spec, data_dir, str(study_file))
    url = S.storage_url(storage)
    store = S.open_storage(url, heartbeat=False)
    name = name or spec.name
    n_trials = trials or _stored_budget(store, name)
    if from_study is not None:
        S.resolve_study_name(from_study, store)  # a clear error before the new study exists
        if from_study == name:
            raise UserError(f"--from-study {from_study}: that is the study this run continues; name another study")
    study = S.create_or_load_study(spec, name, store)
    _stop_if_done(study, n_trials)
    recipe = warmstart.enqueue_known_recipe(study, spec)
    if recipe is not None:
        typer.echo(recipe.describe("trial 0 is the known recipe (the config defaults)"))
    if from_study is not None:
        copied, skipped, before = warmstart.copy_trials(S.load_study(from_study, store)[0], study, spec)
        again = f", {before} copied before" if before else ""
        typer.echo(f"copied {copied} finished trials of study '{from_study}' ({skipped} did not fit this space{again})")
    for path, cfg in zip(enqueue or [], queued):
        typer.echo(warmstart.enqueue(study, spec, cfg, str(path)).describe(f"queued {path}"))
    at = B.set_budgets(study, deadline, patience_trials)
    if at is not None:
        typer.echo(f"time budget: no trial starts after {at:%Y-%m-%d %H:%M:%S} UTC")
    art = L.artifacts_dir(artifacts, url, study)
    study.set_user_attr(N_TRIALS_ATTR, n_trials)
    study.set_user_attr(L.ARTIFACTS_ATTR, str(art))
    _cost_note(spec, study, slots, data_dir, L.threads_per_worker(len(slots)))
    code = L.launch(study, url, slots, n_trials, artifacts=art, data_dir=_abs(data_dir), max_failures=max_failures)
    raise typer.Exit(code)


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
    worker_index: Annotated[int, typer.Option(min=0, help="Offsets the sampler's seed: give workers on different hosts different values.")] = 0,
) -> None:
    """Join an existing study from any host: work on it until its budget is reached."""
    import torch

    from stl_tune.search import launch as L
    from stl_tune.search import study as S

    url = S.storage_url(storage)
    slots = L.plan_slots(gpus, workers_per_gpu, workers)
    if len(slots) > 1 or (slots[0] is not None and torch.cuda.device_count() > 1):
        study, spec = S.load_study(name, S.open_storage(url, heartbeat=False))
        n_trials = _budget_left(study, trials)
        _prepare_data(spec, data_dir, f"study '{study.study_name}'")
        art = L.artifacts_dir(artifacts, url, study)
        _cost_note(spec, study, slots, data_dir, L.threads_per_worker(len(slots)))
        code = L.launch(study, url, slots, n_trials, artifacts=art, data_dir=_abs(data_dir),
                        max_failures=max_failures, first_index=worker_index)  # fmt: skip
        raise typer.Exit(code)

    from rich.console import Console

    from stl_tune.search.budget import stop_reason
    from stl_tune.search.live import EPOCH_LINES_ENV, EpochLog, View
    from stl_tune.search.objective import Objective
    from stl_tune.search.workers import POLL_S, work

    quiet_optuna()
    study, spec = S.load_study(name, S.open_storage(url, heartbeat=True), worker=worker_index)
    n_trials = _budget_left(study, trials)
    on_its_own = not os.environ.get(L.PARENT_ENV)  # else the launching process checks, shows and reaps
    if on_its_own:
        _prepare_data(spec, data_dir, f"study '{study.study_name}'")
        _cost_note(spec, study, slots, data_dir, torch.get_num_threads())
    L.requeue_dead_here(study)  # of an earlier run on this host: no need to wait for the heartbeat
    overrides = {"data.dir": str(_abs(data_dir))} if data_dir is not None else {}
    objective = Objective(spec, L.artifacts_dir(artifacts, url, study), overrides)
    console = Console()
    if os.environ.get(EPOCH_LINES_ENV, "0" if console.is_terminal else "1") == "1":
        objective = EpochLog(console).around(objective)
    callbacks = [_trial_line]
    view = View(study, n_trials, console, {os.getpid(): f"w{worker_index}"}) if on_its_own else None
    if view is not None and view.live is None:  # a log: the study's line after each trial
        callbacks.append(lambda *_: view.refresh())
    try:
        with view.following(POLL_S) if view is not None else contextlib.nullcontext():
            t = work(study, objective, n_trials, max_failures=max_failures, callbacks=callbacks)
    except KeyboardInterrupt as e:  # click would print "Aborted!" and exit 1
        typer.echo(_stopped(study, e), err=True)
        raise typer.Exit(130) from None
    stopped = stop_reason(study) if t.finished < n_trials else None
    typer.echo(f"study {study.study_name}: {t.finished}/{n_trials} trials finished" + (f"; stopped: {stopped}" if stopped else ""))


def _stored_budget(storage, name: str) -> int:
    """The budget a previous `run` stored for study `name`; a UserError (before anything is
    created) when there is none."""
    from stl_tune.search.trials import N_TRIALS_ATTR

    try:
        n = storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(N_TRIALS_ATTR)
    except KeyError:  # no such study yet
        n = None
    if not n:
        raise UserError(f"study '{name}' has no trial budget yet; pass --trials N")
    return int(n)


def _budget_left(study, trials: int | None) -> int:
    """A worker's budget: --trials, else the one `run` stored; exits when it is already met."""
    from stl_tune.search import optuna_compat as compat

    n_trials = trials or _stored_budget(compat.storage_of(study), study.study_name)
    _stop_if_done(study, n_trials)
    return n_trials


def _prepare_data(spec, data_dir: Path | None, source: str) -> None:
    """Before any trial: fetch STL-10 here rather than in every worker at the same time, check the
    study against the data (a batch size larger than the training set) and say what data it is."""
    from stl_tune import config
    from stl_tune.data import describe, ensure_downloaded
    from stl_tune.search.space import check_against_data

    overrides = {"data.dir": str(_abs(data_dir))} if data_dir is not None else {}
    data = config.from_dict(None, {**spec.fixed, **overrides}).data
    ensure_downloaded(data)
    check_against_data(spec, _abs(data_dir), source=source)
    typer.echo(f"data: {describe(data)}")


def _stop_if_done(study, n_trials: int) -> None:
    from stl_tune.search.launch import plural
    from stl_tune.search.trials import tally

    finished = tally(study).finished
    if finished >= n_trials:
        typer.echo(f"study {study.study_name} already has {plural(finished, 'finished trial')} "
                   f"(budget {n_trials}); nothing to do")  # fmt: skip
        raise typer.Exit(0)


COST_NOTE_S = 600  # the start-up check speaks when one trial would take longer than this here


def _cost_note(spec, study, slots: list[str | None], data_dir: Path | None, threads: int) -> None:
    """On a host without a GPU, before a study's first trial: time one training step and say in
    one line what a full trial of the study's first config takes here, when that is long. It
    informs; the run goes on."""
    from optuna.trial import TrialState

    from stl_tune import data
    from stl_tune.search.eta import duration, reference_config, secs, trial_cost

    if any(slot is not None for slot in slots):
        return
    if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        return  # trials have run: their epoch times give the time left instead
    cfg = reference_config(spec)
    if data_dir is not None:
        cfg.data.dir = str(_abs(data_dir))
    cost = trial_cost(cfg, data.train_size(cfg.data), threads)
    if cost.seconds < COST_NOTE_S:
        return
    m = cfg.model
    typer.echo(
        f"note: no GPU here: one trial (width {m.width}, batch {cfg.optim.batch_size}, {cfg.data.image_size} px, "
        f"{cost.epochs} epochs) takes about {duration(cost.seconds)} on this CPU ({cost.steps} steps of "
        f"{secs(cost.step_s)} s + {secs(cost.eval_s)} s of validation per epoch, {threads} threads); "
        "use a GPU (--gpus), a smaller study (--study studies/smoke.yaml) or --time-budget"
    )


def _stopped(study, e: KeyboardInterrupt) -> str:
    """A worker's one line on a stop signal: where its trial stopped and where it will resume."""
    from stl_tune.search import optuna_compat as compat
    from stl_tune.search.study import MAX_RETRY
    from stl_tune.search.workers import Interrupted

    if not isinstance(e, Interrupted):
        return "stopped; no trial was running"
    t = e.trial
    done = len(t.user_attrs.get("curve") or [])
    if not any(compat.retry_history(r)[-1:] == [t.number] for r in study.get_trials(deepcopy=False)):
        return f"trial {t.number} stopped at epoch {done}; not queued again: it was retried {MAX_RETRY} times"
    saved = _saved_epoch(t)
    resume = f"from epoch {saved}" if saved else "from the start (no checkpoint yet)"
    return f"trial {t.number} stopped at epoch {done}, queued to resume {resume}"


def _saved_epoch(trial) -> int:
    """The epoch of a stopped trial's latest checkpoint, which its retry resumes from (0: none)."""
    return (trial.user_attrs.get("checkpoint") or {}).get("epoch", 0)


def _trial_line(study, trial) -> None:
    """One line per trial this worker ran (surplus claims say nothing)."""
    from stl_tune.search.launch import plural
    from stl_tune.search.trials import fail_reason

    reason = fail_reason(trial)
    if reason == "surplus":
        return
    epochs = trial.user_attrs.get("epochs_run")
    if reason == "time budget":  # stopped on purpose, not a failure
        typer.echo(f"trial {trial.number} paused at epoch {epochs} by the time budget, queued to resume from epoch "
                   f"{_saved_epoch(trial)}")  # fmt: skip
        return
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    note = f" ({reason})" if reason else ""
    after = f" after {plural(epochs, 'epoch')}" if epochs else ""
    typer.echo(f"trial {trial.number} {trial.state.name.lower()}{value}{after}{note}")


def quiet_optuna() -> None:
    """Optuna's INFO lines (a study created or loaded, each trial with full-precision params, an
    enqueue skipped) would bury the output: stl-tune says what matters in its own lines."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _abs(path: Path | None) -> Path | None:
    # Workers may start in another directory (and hosts mount data elsewhere): pass absolute paths.
    return path.expanduser().resolve() if path is not None else None


@app.command()
def confirm(
    name: NameOpt = None,
    storage: StorageOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Candidates: the study's best K complete trials.")] = 3,
    seeds: Annotated[int, typer.Option(min=1, help="New seeds per candidate (each also draws a new validation split).")] = 3,
    gpus: Gpus = "all",
    workers_per_gpu: PerGpu = 1,
    workers: Workers = None,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
    max_failures: MaxFailures = 5,
) -> None:
    """Re-train the best K trials with S new seeds (study NAME.confirm, same workers), then rank them by mean."""
    from rich.console import Console
    from rich.table import Table

    from stl_tune.search import confirm as CF
    from stl_tune.search import launch as L
    from stl_tune.search import study as S
    from stl_tune.search.trials import tally

    quiet_optuna()
    url = S.storage_url(storage)
    search, spec = S.load_study(name, S.open_storage(url, heartbeat=False, create=False))
    slots = L.plan_slots(gpus, workers_per_gpu, workers)
    # The data the search trained on: its best trial's recorded data.dir, unless --data-dir says otherwise.
    data_dir = data_dir or CF.searched_data_dir(search)
    _prepare_data(spec, data_dir, f"study '{search.study_name}'")  # before the confirm study exists
    study, candidates, seed_list = CF.prepare(search, spec, top, seeds)
    n_trials = len(candidates) * len(seed_list)
    code = 0
    if tally(study).finished < n_trials:  # else: confirmed already, by an identical call
        art = L.artifacts_dir(artifacts, url, study)
        study.set_user_attr(L.ARTIFACTS_ATTR, str(art))
        code = L.launch(study, url, slots, n_trials, artifacts=art, data_dir=_abs(data_dir), max_failures=max_failures)
    summary = CF.summarize(study, search)
    table = Table("trial", f"search {spec.objective}", f"mean ± std over seeds {', '.join(map(str, seed_list))}",
                  title=f"Confirmed: the best {len(candidates)} trials of '{search.study_name}'")  # fmt: skip
    best = CF.best_confirmed(search)
    for t in candidates:
        s = summary.get(str(t.number))
        mark = " (best)" if best is not None and best[0] == t.number else ""
        cell = f"{s['mean']:.4f} ± {s['std']:.4f} (n={len(s['values'])}){mark}" if s else "not confirmed"
        table.add_row(str(t.number), f"{t.value:.4f}", cell)
    Console().print(table)
    if best is not None:
        typer.echo(f"export it: stl-tune export --name {search.study_name}{S.storage_arg(storage)} -o best.yaml "
                   f"(takes trial {best[0]})")  # fmt: skip
    raise typer.Exit(code)
