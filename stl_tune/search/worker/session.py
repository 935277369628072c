"""What `stl-tune run`, `worker` and `confirm` do below the command line: the steps before any
trial, then the workers of this host, launched as processes or run in this process.

Before any trial, in this order (the one place for such steps):
  1. the options and files are checked (the storage URL first, search/storage/urls.py; slots, the time
     budget, --enqueue files), before the study exists or changes;
  2. the data: fetched once, every folder image decoded once (an unreadable one is one line here),
     checked against the study, described (search/spec/datacheck.py);
  3. the study: created or loaded, its budget stored; a met budget ends the command here;
  4. the artifacts folder (artifacts_dir), stored in the study for this host's later workers;
  5. on a host without a GPU, what one trial costs here (search/worker/probe.py; run and worker only);
  6. the trials of this host's dead workers re-queued (requeue_dead_here).
Then the workers: one process per slot under the live view (search/worker/launch.py), or the worker loop in
this process (work_here, search/worker/workers.py). A worker with one slot works here; so does a process
that search/worker/launch.py started (`stl-tune worker --launched`), which leaves steps 2, 5 and 6 and the
live view to the process that launched it.

Every entry point returns the command's exit code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from rich.console import Console
from rich.table import Table

from stl_tune import config
from stl_tune.errors import UserError
from stl_tune.search import optuna_compat as compat
from stl_tune.search import record
from stl_tune.search.fmt import numbers, parse_duration, plural
from stl_tune.search.record import ARTIFACTS_ATTR, N_TRIALS_ATTR
from stl_tune.search.settings import ARTIFACTS_ENV
from stl_tune.search.spec import datacheck, warmstart
from stl_tune.search.spec.space import StudySpec, default_study_file, load_study_file
from stl_tune.search.state import confirm as CF
from stl_tune.search.state import limits
from stl_tune.search.state.outcome import Reason, fail_reason, requeue_dead
from stl_tune.search.state.study import create_or_load_study, load_study, resolve_study_name
from stl_tune.search.state.trials import tally
from stl_tune.search.storage.storages import MAX_RETRY, open_storage
from stl_tune.search.storage.urls import sqlite_file, storage_arg, storage_url
from stl_tune.search.views.live import View
from stl_tune.search.worker import launch
from stl_tune.search.worker.epochlog import EpochLog
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.probe import cost_note
from stl_tune.search.worker.workers import POLL_S, Interrupted, work
from stl_tune.stop import Stop

say = functools.partial(print, flush=True)  # a line of the command's output


@dataclass
class WorkerOptions:
    """The options that run, worker and confirm share: where this host's workers run and what they read."""

    gpus: str = "all"  # all | none | 0,1,...
    workers_per_gpu: int = 1
    workers: int | None = None  # CPU worker processes when no GPU is used
    data_dir: Path | None = None  # this host's dataset folder: data.dir of every trial
    artifacts: Path | None = None  # the checkpoint folder (artifacts_dir)
    max_failures: int = 5

    def __post_init__(self) -> None:
        # Workers may start in another directory (and hosts mount data elsewhere): absolute paths.
        self.data_dir = _absolute(self.data_dir)

    def slots(self) -> list[str | None]:
        """This host's worker slots; with no GPU among them, this process is kept off the GPUs too."""
        slots = launch.plan_slots(self.gpus, self.workers_per_gpu, self.workers)
        launch.keep_off_gpus(slots)
        return slots


# ----------------------------------------------------------------------------------- commands
def run(
    study_file: Path | None,
    *,
    name: str | None,
    n_trials: int | None,
    storage: str | None,
    options: WorkerOptions,
    enqueue: list[Path],
    time_budget: str | None,
    patience: int | None,
    from_study: str | None,
) -> int:
    """`stl-tune run`: create or continue a study, warm-start it, set its limits, run its workers."""
    quiet_optuna()
    url = storage_url(storage)  # checked first: a typo there is the same line as from `status`
    study_file = study_file if study_file is not None else default_study_file()
    spec = load_study_file(study_file)
    if options.data_dir is not None:  # the study records the folder its trials train on
        spec = replace(spec, fixed={**spec.fixed, "data.dir": str(options.data_dir)})
    slots = options.slots()
    launch.check_device(str(spec.fixed.get("runtime.device", "auto")), slots)
    duration = time_budget or spec.time_budget
    deadline = parse_duration(duration) if duration else None
    queued = [config.load(path) for path in enqueue]  # a bad file is refused before anything is made
    say(datacheck.ready_data(spec, options.data_dir, str(study_file)))
    store = open_storage(url, heartbeat=False)
    name = name or spec.name
    n_trials = n_trials or _stored_budget(store, name)
    if from_study is not None:
        resolve_study_name(from_study, store)  # a clear error before the new study exists
        if from_study == name:
            raise UserError(f"--from-study {from_study}: that is the study this run continues; name another study")
    study = create_or_load_study(spec, name, store)
    if _done(study, n_trials):
        return 0
    recipe = warmstart.enqueue_known_recipe(study, spec)
    if recipe is not None:
        say(recipe.line("trial 0 is the known recipe (the config defaults)"))
    if from_study is not None:
        copied, skipped, before = warmstart.copy_trials(load_study(from_study, store)[0], study, spec)
        again = f", {before} copied before" if before else ""
        say(f"copied {copied} finished trials of study '{from_study}' ({skipped} did not fit this space{again})")
    for path, cfg in zip(enqueue, queued):
        say(warmstart.enqueue(study, spec, cfg, str(path)).line(f"queued {path}"))
    at = limits.set_limits(study, deadline, patience)
    if at is not None:
        say(f"time budget: no trial starts after {at:%Y-%m-%d %H:%M:%S} UTC")
    artifacts = artifacts_dir(options.artifacts, url, study)
    study.set_user_attr(N_TRIALS_ATTR, n_trials)
    study.set_user_attr(ARTIFACTS_ATTR, str(artifacts))
    _say_cost(spec, study, slots, options, launch.threads_per_worker(len(slots)))
    return _launch(study, url, slots, n_trials, options, artifacts, options.data_dir)


def worker(
    name: str,
    storage: str | None,
    options: WorkerOptions,
    n_trials: int | None,
    index: int,
    *,
    launched: bool = False,
    epoch_lines: bool | None = None,
) -> int:
    """`stl-tune worker`: join a study until its budget is met. Several slots here (or one GPU of
    several) are launched as processes; else, and always when `launched`, the loop runs here."""
    import torch

    quiet_optuna()
    url = storage_url(storage)
    slots = options.slots()
    if not launched and (len(slots) > 1 or (slots[0] is not None and torch.cuda.device_count() > 1)):
        study, spec = load_study(name, open_storage(url, heartbeat=False))
        n_trials = n_trials or _stored_budget(compat.storage_of(study), study.study_name)
        if _done(study, n_trials):
            return 0
        launch.check_device(str(spec.fixed.get("runtime.device", "auto")), slots)
        say(datacheck.ready_data(spec, options.data_dir, f"study '{study.study_name}'"))
        artifacts = artifacts_dir(options.artifacts, url, study)
        _say_cost(spec, study, slots, options, launch.threads_per_worker(len(slots)))
        return _launch(study, url, slots, n_trials, options, artifacts, options.data_dir, first_index=index)
    return work_here(name, url, options, slots, n_trials, index, launched=launched, epoch_lines=epoch_lines)


def confirm(name: str | None, storage: str | None, top: int, seeds: int, options: WorkerOptions) -> int:
    """`stl-tune confirm`: re-train the search's best `top` trials with `seeds` new seeds on this
    host's workers, then print and store their mean ± std (search/state/confirm.py)."""
    quiet_optuna()
    url = storage_url(storage)
    search, spec = load_study(name, open_storage(url, heartbeat=False, create=False))
    slots = options.slots()
    # The data the search trained on: its best trial's recorded data.dir, unless --data-dir says otherwise.
    data_dir = options.data_dir or CF.searched_data_dir(search)
    say(datacheck.ready_data(spec, data_dir, f"study '{search.study_name}'"))  # before the confirm study exists
    study, candidates, seed_list = CF.queue_confirmations(search, spec, top, seeds)
    n_trials = len(candidates) * len(seed_list)
    code = 0
    if tally(study).finished < n_trials:  # else: confirmed already, by an identical call
        artifacts = artifacts_dir(options.artifacts, url, study)
        study.set_user_attr(ARTIFACTS_ATTR, str(artifacts))
        code = _launch(study, url, slots, n_trials, options, artifacts, data_dir)
    summary = CF.summarize(study, search)
    table = Table(
        "trial",
        f"search {spec.objective}",
        f"mean ± std over seeds {', '.join(map(str, seed_list))}",
        title=f"Confirmed: the best {len(candidates)} trials of '{search.study_name}'",
    )
    best = CF.best_confirmed(search)
    for t in candidates:
        s = summary.get(str(t.number))
        mark = " (best)" if best is not None and best[0] == t.number else ""
        cell = f"{s['mean']:.4f} ± {s['std']:.4f} (n={len(s['values'])}){mark}" if s else "not confirmed"
        table.add_row(str(t.number), f"{t.value:.4f}", cell)
    Console().print(table)
    if best is not None:
        say(
            f"export it: stl-tune export --name {search.study_name}{storage_arg(storage)} -o best.yaml "
            f"(takes trial {best[0]})"
        )
    return code


# ----------------------------------------------------------------------------- before any trial
def artifacts_dir(arg: Path | None, url: str, study: optuna.Study) -> Path:
    """Where checkpoints go: --artifacts, else $STL_TUNE_ARTIFACTS, else the folder `run` chose
    for this study, else `artifacts/` next to the SQLite file (storage/artifacts for a server).
    Workers on several hosts need one shared folder (e.g. NFS) mounted at this path."""
    chosen = arg or os.environ.get(ARTIFACTS_ENV) or study.user_attrs.get(ARTIFACTS_ATTR)
    if not chosen:
        db = sqlite_file(url)
        chosen = db.parent / "artifacts" if db is not None else Path("storage/artifacts")
    return Path(chosen).expanduser().resolve()


def requeue_dead_here(study: optuna.Study) -> None:
    """requeue_dead once per start on a host: by the process that launches workers, or by a worker
    started on its own; not by launched siblings, which would race for the same trials (SQLite has
    no row locks to make that safe)."""
    requeued = requeue_dead(study)
    if requeued:
        say(f"queued {numbers(requeued)} of dead workers on this host to resume")


def quiet_optuna() -> None:
    """Optuna's INFO lines (a study created or loaded, each trial with full-precision params, an
    enqueue skipped) would bury the output: stl-tune says what matters in its own lines."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _stored_budget(storage: BaseStorage, name: str) -> int:
    """The budget a previous `run` stored for study `name`; a UserError (before anything is
    created) when there is none."""
    try:
        n = storage.get_study_user_attrs(storage.get_study_id_from_name(name)).get(N_TRIALS_ATTR)
    except KeyError:  # no such study yet
        n = None
    if not n:
        raise UserError(f"study '{name}' has no trial budget yet; pass --trials N")
    return int(n)


def _done(study: optuna.Study, n_trials: int) -> bool:
    """Whether the study's budget is met already; says so."""
    finished = tally(study).finished
    if finished >= n_trials:
        say(
            f"study {study.study_name} already has {plural(finished, 'finished trial')} "
            f"(budget {n_trials}); nothing to do"
        )
    return finished >= n_trials


def _say_cost(
    spec: StudySpec, study: optuna.Study, slots: list[str | None], options: WorkerOptions, threads: int
) -> None:
    note = cost_note(spec, study, slots, options.data_dir, threads)
    if note is not None:
        say(note)


# ------------------------------------------------------------------------------------- workers
def _launch(
    study: optuna.Study,
    url: str,
    slots: list[str | None],
    n_trials: int,
    options: WorkerOptions,
    artifacts: Path,
    data_dir: Path | None,
    first_index: int = 0,
) -> int:
    requeue_dead_here(study)
    return launch.launch(
        study,
        url,
        slots,
        n_trials,
        artifacts=artifacts,
        data_dir=data_dir,
        max_failures=options.max_failures,
        first_index=first_index,
    )


def work_here(
    name: str,
    url: str,
    options: WorkerOptions,
    slots: list[str | None],
    n_trials: int | None,
    index: int,
    *,
    launched: bool,
    epoch_lines: bool | None,
) -> int:
    """The worker loop in this process, with a heartbeat per trial, until the budget is met.

    launched: started by search/worker/launch.py, which did the steps before any trial and shows the
    live view. epoch_lines: write a line per epoch (at most every epochlog.LOG_EVERY_S); None: when
    this process writes to no terminal."""
    import torch

    study, spec = load_study(name, open_storage(url, heartbeat=True), worker=index)
    n_trials = n_trials or _stored_budget(compat.storage_of(study), study.study_name)
    if _done(study, n_trials):
        return 0
    launch.check_device(str(spec.fixed.get("runtime.device", "auto")), slots)
    if not launched:
        say(datacheck.ready_data(spec, options.data_dir, f"study '{study.study_name}'"))
        _say_cost(spec, study, slots, options, torch.get_num_threads())
        requeue_dead_here(study)  # of an earlier run on this host: no need to wait for the heartbeat
    overrides = {"data.dir": str(options.data_dir)} if options.data_dir is not None else {}
    stop = Stop()  # a first signal: the trial stops at its epoch's end, checkpointed there
    objective = Objective(
        spec, artifacts_dir(options.artifacts, url, study), overrides, cpu=slots == [None], stop_requested=stop
    )
    console = Console()
    if epoch_lines if epoch_lines is not None else not console.is_terminal:
        objective = EpochLog(console).around(objective)
    callbacks = [_trial_line]
    view = None if launched else View(study, n_trials, console, {os.getpid(): f"w{index}"})
    if view is not None and view.live is None:  # a log: the study's line after each trial
        callbacks.append(lambda *_: view.refresh())
    try:
        with view.following(POLL_S) if view is not None else contextlib.nullcontext():
            t = work(study, objective, n_trials, max_failures=options.max_failures, callbacks=callbacks, stop=stop)
    except KeyboardInterrupt as e:  # click would print "Aborted!" and exit 1
        print(_stopped(study, e), file=sys.stderr, flush=True)
        return 130
    stopped = limits.stop_reason(study) if t.finished < n_trials else None
    say(
        f"study {study.study_name}: {t.finished}/{n_trials} trials finished"
        + (f"; stopped: {stopped}" if stopped else "")
    )
    return 0


def _stopped(study: optuna.Study, e: KeyboardInterrupt) -> str:
    """A worker's one line on a stop signal: where its trial stopped and where it will resume."""
    if not isinstance(e, Interrupted):
        return "stopped; no trial was running"
    t = e.trial
    done = len(record.curve(t))
    retry = next((r for r in study.get_trials(deepcopy=False) if compat.retry_history(r)[-1:] == [t.number]), None)
    if retry is None:
        return f"trial {t.number} stopped at epoch {done}; not queued again: it was retried {MAX_RETRY} times"
    saved = record.saved_epoch(t)
    resume = f"from epoch {saved}" if saved else "from the start (no checkpoint yet)"
    return f"trial {t.number} stopped at epoch {done}, queued to resume {resume} as trial {retry.number}"


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per trial this worker ran (surplus claims say nothing)."""
    reason = fail_reason(trial)
    if reason == Reason.SURPLUS:
        return
    epochs = trial.user_attrs.get(record.EPOCHS_RUN_ATTR)
    if reason == Reason.TIME_BUDGET:  # stopped on purpose, not a failure
        say(
            f"trial {trial.number} paused at epoch {epochs} by the time budget, queued to resume from epoch "
            f"{record.saved_epoch(trial)}"
        )
        return
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    note = f" ({reason})" if reason else ""
    after = f" after {plural(epochs, 'epoch')}" if epochs else ""
    say(f"trial {trial.number} {trial.state.name.lower()}{value}{after}{note}")


def _absolute(path: Path | None) -> Path | None:
    return path.expanduser().resolve() if path is not None else None
