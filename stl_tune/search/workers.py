"""Worker processes: one per GPU slot (or N on a CPU-only machine), an exact trial budget across
all of them, a live view, and a clean stop on Ctrl-C.

Exactly N finished trials (COMPLETE or PRUNED) across any number of processes and hosts:
  1. Before asking for a trial, a worker counts the study: it stops once N trials have finished,
     and waits while finished + RUNNING >= N (those in flight may still fill the budget; WAITING
     trials, such as retries of dead workers' trials, are what the next ask() takes first).
  2. That check races with other workers, so right after ask() the new trial verifies its claim:
     it runs only if fewer than N trials with a smaller number are COMPLETE, PRUNED, RUNNING or
     WAITING; otherwise it ends at once as FAIL with fail_reason "surplus" (and counts for nothing).
  Why this is exact: a trial's number is fixed when it is created, under a lock on the study row,
  so every smaller-numbered trial is already visible when a trial verifies, and trial states only
  move forward (WAITING -> RUNNING -> COMPLETE | PRUNED | FAIL). If N+1 trials finished, the one
  with the largest number saw the other N (or their earlier, unfinished states) when it verified,
  and would have been surplus. Conversely a surplus verdict needs N live trials ahead of it, so
  the budget is never left short: the loop in (1) starts new trials until N have finished, also
  after failures (which never count), and the same rules hold on a re-run of the same command.
Failures (errors, divergence) do not count towards N; when the last `max_failures` trials to end
since a worker started all failed, the study is hopeless and the worker stops with that message.

Dead workers: each RUNNING trial has a heartbeat (study.open_storage); a trial silent for the grace
period is failed and re-queued as WAITING by RetryHeartbeatStaleTrialCallback, and the objective
resumes it from its last checkpoint. Optuna checks for stale trials only when a worker asks for
a trial, so a worker that is waiting in (1) checks too; otherwise the last live workers could wait
forever on a dead one's RUNNING trial. Deaths seen on this host need no grace period: `launch`
re-queues the trials of a worker process that exits abnormally at once, and a worker starting up
those of dead processes of this host (requeue_dead), e.g. of a run whose terminal was closed.

Ctrl-C / SIGTERM: the parent forwards the signal once; each worker fails its trial with
fail_reason "interrupted" and re-queues it through the same retry callback (it resumes from its
checkpoint on the next run), then exits. A second Ctrl-C kills the workers and re-queues their trials.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stl_tune.errors import UserError
from stl_tune.search.study import describe, experimental_ok, retry_callback, sqlite_file

N_TRIALS_ATTR = "n_trials"  # study user attr: the budget set by `stl-tune run --trials`
ARTIFACTS_ATTR = "artifacts"  # study user attr: artifact folder chosen at `run` (same host workers)
ARTIFACTS_ENV = "STL_TUNE_ARTIFACTS"
PARENT_ENV = "STL_TUNE_LAUNCHED_BY"  # set by launch for its children: the pid of the process that reaps them
NOT_AN_ERROR = (None, "surplus", "interrupted")  # fail reasons that say nothing about the study
DIED = "worker died"  # fail reason of a trial whose worker process died (or stopped its heartbeats)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL_S = 1.0  # how often a waiting worker and the live view re-read the study


log = logging.getLogger(__name__)


class StudyStopped(UserError):
    """Every recent trial failed: running more would fail too."""


# ---------------------------------------------------------------------------------- the budget
@dataclass
class Tally:
    trials: int = 0  # all of them, surplus and interrupted ones too
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # errors, divergence and dead workers (not surplus or interrupted trials)
    running: int = 0
    waiting: int = 0
    failure_streak: int = 0  # trials that ended most recently and all failed with an error
    last_failure: str = ""
    best: FrozenTrial | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def fail_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed: its fail_reason, or DIED for one failed by a heartbeat check, which
    leaves the attrs as the dead worker wrote them (status still "running")."""
    reason = trial.user_attrs.get("fail_reason")
    if reason is None and trial.state == TrialState.FAIL and trial.user_attrs.get("status") == "running":
        return DIED
    return reason


def tally(study: optuna.Study, since: datetime | None = None) -> Tally:
    """Counts of the study's trials; the failure streak only among trials started after `since`
    (a worker's start), so a re-run after fixing the cause is not stopped by old failures."""
    trials = study.get_trials(deepcopy=False)
    t = Tally(trials=len(trials))
    ended = []
    for tr in trials:
        reason = fail_reason(tr)
        if tr.state == TrialState.COMPLETE:
            t.complete += 1
        elif tr.state == TrialState.PRUNED:
            t.pruned += 1
        elif tr.state == TrialState.RUNNING:
            t.running += 1
        elif tr.state == TrialState.WAITING:
            t.waiting += 1
        elif tr.state == TrialState.FAIL and reason not in NOT_AN_ERROR:
            t.failed += 1
        if tr.state.is_finished() and (tr.state != TrialState.FAIL or reason not in NOT_AN_ERROR):
            ended.append(tr)
    ended.sort(key=lambda tr: tr.datetime_complete)
    for tr in reversed(ended):
        if since is not None and (tr.datetime_start is None or tr.datetime_start < since):
            break
        if tr.state != TrialState.FAIL:
            break
        t.failure_streak += 1
        t.last_failure = t.last_failure or fail_reason(tr)
    done = [tr for tr in trials if tr.state == TrialState.COMPLETE]
    if done:  # from the trials at hand: study.best_trial would query the storage again
        pick = max if study.direction == StudyDirection.MAXIMIZE else min
        t.best = pick(done, key=lambda tr: tr.value)
    return t


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Step (2) of the module doc: are N trials ahead of this one finished or in flight?"""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    return len(ahead) >= n_trials


# ---------------------------------------------------------------------------- one worker process
class _Stop:
    """While active, SIGINT/SIGTERM raise KeyboardInterrupt only inside `interruptible()` (a
    trial's own work, or waiting): never inside Optuna's ask/tell, so no trial is left half-made or
    RUNNING without a heartbeat. A signal outside is remembered and acted on at the next chance."""

    def __init__(self) -> None:
        self.requested = False
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():  # signals only reach main
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested:
            return  # the first signal is being acted on
        self.requested = True
        if self.armed:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.requested:
            raise KeyboardInterrupt
        self.armed = True
        try:
            yield
        finally:
            self.armed = False


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    *,
    max_failures: int = 5,
    poll_s: float = POLL_S,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
) -> Tally:
    """Run trials in this process until the study has `n_trials` finished ones (see module doc).
    callbacks: study.optimize's, called after each trial.

    Raises StudyStopped when the last `max_failures` trials failed, KeyboardInterrupt on a signal.
    """
    current: list[optuna.Trial] = []
    interrupted: list[bool] = []
    started = datetime.now()  # Optuna's timestamps are local time too
    with _Stop() as stop:

        def budgeted(trial: optuna.Trial) -> float:
            current[:] = [trial]
            try:
                with stop.interruptible():
                    if is_surplus(study, trial, n_trials):
                        trial.set_user_attr("status", "surplus")
                        trial.set_user_attr("fail_reason", "surplus")
                        return math.nan  # Optuna records NaN as FAIL, without a traceback
                    return objective(trial)
            except KeyboardInterrupt:  # also before the objective began: _requeue looks for this
                trial.set_user_attr("fail_reason", "interrupted")
                interrupted.append(True)
                return math.nan  # FAIL too; raised, Optuna would log it with a 25-line traceback

        while not stop.requested:
            t = tally(study, since=started)
            if t.finished >= n_trials:
                return t
            if t.failure_streak >= max_failures:
                raise StudyStopped(
                    f"stopping: the last {t.failure_streak} trials failed (last: {t.last_failure}); "
                    "see `stl-tune status` and the trials' fail_reason"
                )
            if t.finished + t.running >= n_trials:
                fail_stale_trials(study)
                with stop.interruptible():
                    time.sleep(poll_s)
                continue
            current.clear()
            try:
                study.optimize(budgeted, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Our heartbeats missed the grace period (a stalled disk or network) and another
                # worker failed the trial and queued its retry: that retry carries on; so do we.
                log.warning("trial %s was failed as stale by another worker; going on", current[0].number if current else "?")
            if interrupted:
                _requeue(study, current[0])
                raise KeyboardInterrupt
        raise KeyboardInterrupt


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's retry callback, re-queue) the study's RUNNING trials whose
    heartbeat is older than the grace period."""
    with experimental_ok():
        optuna.storages.fail_stale_trials(study)


def _requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    """Queue a retry of an interrupted trial (Optuna has told it FAIL), which resumes from its
    checkpoint: the retry callback that heartbeats use for dead workers' trials."""
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state == TrialState.FAIL and frozen.user_attrs.get("fail_reason") == "interrupted":
        _retry(study, frozen)


def _retry(study: optuna.Study, failed: FrozenTrial) -> None:
    # A gRPC proxy or a reader's storage has no heartbeat and so no callback of its own: the same retry.
    storage = study._storage
    with experimental_ok():
        retry = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)() or retry_callback()
        retry(study, failed)


def worker_id() -> str:
    """host:pid, the "worker" user attr of the trials this process runs (objective.Objective)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def requeue_dead(study: optuna.Study, pids: Collection[int] | None = None) -> list[int]:
    """Fail the RUNNING trials of dead worker processes of this host (fail_reason DIED) and queue
    their retries at once, rather than after the heartbeat's grace period; the failed trials' numbers.

    pids: processes known to have died (launch's children); None: every process of this host that
    no longer exists. Trials of other hosts are left to the heartbeat. (Containers that share the
    host's name but not its process table, e.g. Docker's --network host, must not share a study
    with the host's workers: their processes look dead from each other.)
    """
    host = socket.gethostname()
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if where != host or not pid.isdigit():
            continue
        dead = int(pid) in pids if pids is not None else not _alive(int(pid))
        if not dead:
            continue
        try:  # a finished trial is refused: of processes that do this at once, one fails it and retries
            study._storage.set_trial_user_attr(t._trial_id, "status", "died")
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", DIED)
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # a heartbeat check or another worker was first
            continue
        _retry(study, study._storage.get_trial(t._trial_id))
        done.append(t.number)
    return done


def requeue_dead_here(study: optuna.Study, console: Console | None = None) -> None:
    """requeue_dead once per start on a host: by the process that launches workers, or by a worker
    started on its own; not by launched siblings, which would race for the same trials (SQLite has
    no row locks to make that safe)."""
    if os.environ.get(PARENT_ENV):
        return
    requeued = requeue_dead(study)
    if requeued:
        (console or Console()).print(f"queued {_numbers(requeued)} of dead workers on this host to resume")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


# ------------------------------------------------------------------------------ worker processes
def artifacts_dir(arg: Path | None, url: str, study: optuna.Study) -> Path:
    """Where checkpoints go: --artifacts, else $STL_TUNE_ARTIFACTS, else the folder `run` chose
    for this study, else `artifacts/` next to the SQLite file (storage/artifacts for a server).
    Workers on several hosts need one shared folder (e.g. NFS) mounted at this path."""
    chosen = arg or os.environ.get(ARTIFACTS_ENV) or study.user_attrs.get(ARTIFACTS_ATTR)
    if not chosen:
        db = sqlite_file(url)
        chosen = db.parent / "artifacts" if db is not None else Path("storage/artifacts")
    return Path(chosen).expanduser().resolve()


def plan_slots(gpus: str, workers_per_gpu: int = 1, workers: int | None = None) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker process; None for a CPU worker.

    gpus: "all" (every visible GPU; CPU workers when there is none), "none", or "0,1,...".
    workers: CPU worker processes when no GPU is used (default 1).
    """
    import torch  # here, not at import: the CLI's other commands should not pay for it

    visible = [str(i) for i in range(torch.cuda.device_count())]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:  # index i of this process is the parent's i-th device: keep that name for children
        visible = [d.strip() for d in env.split(",")][: len(visible)]
    if gpus == "none":
        chosen: list[str] = []
    elif gpus == "all":
        chosen = visible
    else:
        try:
            indices = [int(g) for g in gpus.split(",")]
        except ValueError:
            raise UserError(f"--gpus must be all, none or indices like 0,1; got {gpus!r}") from None
        bad = [i for i in indices if not 0 <= i < len(visible)]
        if bad:
            raise UserError(f"--gpus {gpus}: no GPU {bad[0]} here ({len(visible)} visible)")
        chosen = [visible[i] for i in indices]
    if workers_per_gpu < 1 or (workers is not None and workers < 1):
        raise UserError("--workers and --workers-per-gpu must be at least 1")
    if chosen:
        return [g for g in chosen for _ in range(workers_per_gpu)]
    return [None] * (workers or 1)


def worker_command(
    name: str, n_trials: int, artifacts: Path, data_dir: Path | None, max_failures: int, index: int, gpu: str | None
) -> list[str]:
    """The `stl-tune worker` command line of one slot (a single slot runs in that process).
    The storage URL travels in the environment, not argv: `ps` shows argv to every user."""
    cmd = [sys.executable, "-m", "stl_tune", "worker", "--name", name,
           "--trials", str(n_trials), "--artifacts", str(artifacts), "--max-failures", str(max_failures),
           "--worker-index", str(index), "--gpus", "none" if gpu is None else "all", "--workers", "1"]  # fmt: skip
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def launch(
    study: optuna.Study,
    storage_url: str,
    slots: list[str | None],
    n_trials: int,
    *,
    artifacts: Path,
    data_dir: Path | None = None,
    max_failures: int = 5,
    first_index: int = 0,
    console: Console | None = None,
) -> int:
    """Start one worker process per slot, show the live view until they exit; the exit code.

    Each child sees only its GPU (CUDA_VISIBLE_DEVICES, set before it imports torch) and gets an
    equal share of the CPU cores for torch's threads. Children run in their own session, so a
    terminal's Ctrl-C reaches only this process, which forwards it once (see module doc).
    """
    console = console or Console()
    requeue_dead_here(study, console)
    threads = max(1, len(os.sched_getaffinity(0)) // len(slots))
    procs: list[subprocess.Popen] = []
    for i, gpu in enumerate(slots):
        env = {**os.environ, "STL_TUNE_STORAGE": storage_url, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        env.setdefault("OMP_NUM_THREADS", str(threads))
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        cmd = worker_command(study.study_name, n_trials, artifacts, data_dir, max_failures, first_index + i, gpu)
        procs.append(subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        ))  # fmt: skip
    where = ", ".join(f"GPU {g}" if g is not None else "CPU" for g in slots)
    console.print(f"study {study.study_name} in {describe(study._storage)}: {plural(n_trials, 'trial')}, "
                  f"{plural(len(slots), 'worker')} ({where}), artifacts in {artifacts}", soft_wrap=True)  # fmt: skip

    # Signals only set a flag here; the loop below acts on them (forward once, then kill).
    signals: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: signals.append(signum)) for s in STOP_SIGNALS}
    forwarded = 0
    reaped: set[int] = set()  # indices of workers whose exit was dealt with
    try:
        with Live(_view(study, n_trials, procs), console=console, refresh_per_second=2) as live:
            readers = [
                threading.Thread(target=_relay, args=(p, f"w{first_index + i}", live.console), daemon=True)
                for i, p in enumerate(procs)
            ]
            for r in readers:
                r.start()
            while any(p.poll() is None for p in procs):
                time.sleep(POLL_S)
                if len(signals) > forwarded:
                    if forwarded == 0:
                        live.console.print("stopping: workers save their trials for the next run (Ctrl-C again to kill)")
                        for p in procs:
                            if p.poll() is None:
                                p.send_signal(signal.SIGINT)
                    else:  # the second Ctrl-C: kill; _reap re-queues their trials
                        for p in procs:
                            p.kill()
                    forwarded = len(signals)
                _reap(study, procs, reaped, first_index, live.console, expected=130 if forwarded else 0)
                live.update(_view(study, n_trials, procs))
            _reap(study, procs, reaped, first_index, live.console, expected=130 if forwarded else 0)
            for r in readers:
                r.join(timeout=5)
            live.update(_view(study, n_trials, procs))
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    if not console.is_terminal:
        console.line()  # Live leaves its last frame without a line end when not on a terminal
    t = tally(study)
    best = f"best {t.best.value:.4f} (trial {t.best.number})" if t.best is not None else "no result yet"
    console.print(f"{t.finished}/{n_trials} trials finished ({t.complete} complete, {t.pruned} pruned), "
                  f"{t.failed} failed, {t.running} running; {best}")  # fmt: skip
    if signals:
        console.print("interrupted: run the same command again to continue")
        return 130
    if t.finished < n_trials:
        console.print("[red]workers stopped before the budget was reached[/red] (see their output above)")
        return 1
    return 0


def _reap(
    study: optuna.Study, procs: list[subprocess.Popen], reaped: set[int], first_index: int, console: Console,
    expected: int,
) -> None:
    """Name each worker that exited abnormally (a signal, or an exit code other than 0 and
    `expected`) and re-queue its trials now: the others take the retries up at once."""
    for i, p in enumerate(procs):
        code = p.poll()
        if code is None or i in reaped:
            continue
        reaped.add(i)
        if code in (0, expected):
            continue
        how = f"died (signal {-code})" if code < 0 else f"exited with code {code}"
        requeued = requeue_dead(study, [p.pid])
        again = f"; {_numbers(requeued)} queued to resume" if requeued else ""
        console.print(f"worker w{first_index + i} (pid {p.pid}) {how}{again}")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _numbers(trials: list[int]) -> str:
    return f"trial{'' if len(trials) == 1 else 's'} {', '.join(map(str, trials))}"


def _relay(proc: subprocess.Popen, tag: str, console: Console) -> None:
    """Print a worker's output above the live view, one tagged line at a time."""
    assert proc.stdout is not None
    for line in proc.stdout:
        console.print(Text(f"[{tag}] {line.rstrip()}"), soft_wrap=True)


def _view(study: optuna.Study, n_trials: int, procs: list[subprocess.Popen]) -> Table:
    t = tally(study)
    table = Table(title=f"study {study.study_name}", title_justify="left")
    for col in ("finished", "pruned", "failed", "running", "waiting", "best", "workers"):
        table.add_column(col, justify="right")
    best = f"{t.best.value:.4f} (#{t.best.number})" if t.best is not None else "-"
    alive = sum(p.poll() is None for p in procs)
    table.add_row(f"{t.finished}/{n_trials}", str(t.pruned), str(t.failed), str(t.running),
                  str(t.waiting), best, f"{alive}/{len(procs)}")  # fmt: skip
    return table
