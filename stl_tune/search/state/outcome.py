"""How a trial ended, as one value, and the one function that acts on it.

The objective (search/worker/objective.py) returns an Outcome for the trial it ran, the worker loop
(search/worker/workers.py) makes one for a surplus claim and for a stop signal outside the objective, and
settle() acts on it, in this order: the trial's status and fail reason recorded in its user attrs;
the checkpoints of its line of attempts kept for a retry, or swept; Optuna told; the retry queued
where one is due. A trial whose worker died is settled by requeue_dead (a process of this host) or
by the storage's heartbeat check (any host), since its worker cannot. What each outcome means is
the table MEANINGS, and nowhere else:

    kind           status         fail_reason            Optuna    retried  a failure
    completed      completed      -                      COMPLETE  -        -
    early_stopped  early_stopped  -                      COMPLETE  -        -
    returned       (none)         -                      COMPLETE  -        -       a plain Optuna objective's value
    pruned         pruned         -                      PRUNED    -        -
    diverged       diverged       diverged at epoch N    FAIL      -        yes
    failed         failed         ErrorType: message     FAIL      -        yes
    data error     failed         data error             FAIL      yes      -       and the worker stops the run
    interrupted    interrupted    interrupted            FAIL      yes      -       Ctrl-C / SIGTERM: the worker stops
    paused         paused         time budget            FAIL      yes      -       at the study's deadline
    surplus        surplus        surplus                FAIL      -        -       a claim past the budget
    died           died           worker died            FAIL      yes      yes     settled by requeue_dead
    stale          (another worker failed and re-queued the trial: nothing is recorded or told here)

A completed trial whose value is not a finite number (NaN, None) is told FAIL, as Optuna itself
records one. A retried trial keeps its checkpoints, which the retry resumes (search/worker/objective.py);
every other ending sweeps those of its whole line of attempts. The statuses and fail reasons are
named here only (tests/test_structure.py finds none written as a literal elsewhere).
"""

from __future__ import annotations

import logging
import math
import socket
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune.errors import DataError
from stl_tune.search import optuna_compat as compat
from stl_tune.search import record
from stl_tune.search.storage.storages import retry_callback

log = logging.getLogger(__name__)


class Status(StrEnum):
    """A trial's status attr: what happened to it, in more detail than its Optuna state."""

    RUNNING = "running"
    COMPLETED = "completed"  # the trainer's own statuses of a finished run (train.TrainStatus)
    EARLY_STOPPED = "early_stopped"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    SURPLUS = "surplus"
    DIED = "died"


class Reason(StrEnum):
    """The fixed fail reasons; the others name the error ("diverged at epoch 3", "OSError: ...")."""

    SURPLUS = "surplus"
    INTERRUPTED = "interrupted"
    TIME_BUDGET = "time budget"
    DIED = "worker died"  # its worker process died (or stopped its heartbeats)
    DATA = "data error"  # a DataError: the data, not the trial's config


class Kind(StrEnum):
    """What happened to a trial: a row of MEANINGS."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    RETURNED = "returned"
    PRUNED = "pruned"
    DIVERGED = "diverged"
    FAILED = "failed"
    DATA_ERROR = "data error"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"
    SURPLUS = "surplus"
    DIED = "died"
    STALE = "stale"


@dataclass(frozen=True)
class Meaning:
    state: TrialState | None  # what Optuna is told; None: nothing (another worker told it)
    status: Status | None  # recorded; None: nothing recorded
    reason: Reason | None = None  # the fixed fail reason; else the outcome's own (Outcome.note), if any
    retried: bool = False  # a retry is queued, which resumes from the checkpoints kept for it
    failure: bool = False  # says something about the study's configs: tally's `failed` and failure streak


MEANINGS: dict[Kind, Meaning] = {
    Kind.COMPLETED: Meaning(TrialState.COMPLETE, Status.COMPLETED),
    Kind.EARLY_STOPPED: Meaning(TrialState.COMPLETE, Status.EARLY_STOPPED),
    Kind.RETURNED: Meaning(TrialState.COMPLETE, None),
    Kind.PRUNED: Meaning(TrialState.PRUNED, Status.PRUNED),
    Kind.DIVERGED: Meaning(TrialState.FAIL, Status.DIVERGED, failure=True),
    Kind.FAILED: Meaning(TrialState.FAIL, Status.FAILED, failure=True),
    Kind.DATA_ERROR: Meaning(TrialState.FAIL, Status.FAILED, Reason.DATA, retried=True),
    Kind.INTERRUPTED: Meaning(TrialState.FAIL, Status.INTERRUPTED, Reason.INTERRUPTED, retried=True),
    Kind.PAUSED: Meaning(TrialState.FAIL, Status.PAUSED, Reason.TIME_BUDGET, retried=True),
    Kind.SURPLUS: Meaning(TrialState.FAIL, Status.SURPLUS, Reason.SURPLUS),
    Kind.DIED: Meaning(TrialState.FAIL, Status.DIED, Reason.DIED, retried=True, failure=True),
    Kind.STALE: Meaning(None, None),
}
# fail reasons of trials retried from their checkpoint (stopped, or their worker died)
RETRIED = tuple(m.reason for m in MEANINGS.values() if m.reason is not None and m.retried)
# fail reasons of trials stopped rather than failed: each is retried, from its checkpoint
RESUMABLE = tuple(m.reason for m in MEANINGS.values() if m.reason is not None and m.retried and not m.failure)
# fail reasons that say nothing about the study's configs (None: the trial did not fail)
NOT_AN_ERROR = (None, *(m.reason for m in MEANINGS.values() if m.reason is not None and not m.failure))


@dataclass(frozen=True)
class Outcome:
    """What happened to one trial: its kind, and what the kind needs besides."""

    kind: Kind
    value: float | None = None  # the objective's value of a completed trial
    note: str | None = None  # the fail reason where the kind has no fixed one ("diverged at epoch 3")
    error: BaseException | None = field(default=None, compare=False)  # what a failed trial raised
    # Removes the checkpoints of the trial's line of attempts (the objective's artifact store), if
    # it wrote any: called where the line ends here.
    sweep: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    @property
    def meaning(self) -> Meaning:
        return MEANINGS[self.kind]

    @property
    def reason(self) -> str | None:
        """The fail reason recorded."""
        return self.meaning.reason or self.note

    @property
    def state(self) -> TrialState | None:
        """The state Optuna is told: a completed trial without a finite value is a FAIL."""
        state = self.meaning.state
        if state == TrialState.COMPLETE and (self.value is None or not math.isfinite(self.value)):
            return TrialState.FAIL
        return state

    @classmethod
    def diverged(cls, epoch: int) -> Outcome:
        """A trial whose loss became NaN at `epoch`."""
        return cls(Kind.DIVERGED, note=f"{Status.DIVERGED} at epoch {epoch}")


def caught(e: BaseException) -> Outcome:
    """The outcome of a trial whose run raised `e`: a stop signal, a trial failed as stale by
    another worker meanwhile (its attrs can no longer be written), a pruned plain objective, bad
    data, or any other error (CUDA OOM, a bad value, a bug), which fails the trial alone."""
    if isinstance(e, KeyboardInterrupt):
        return Outcome(Kind.INTERRUPTED)
    if isinstance(e, optuna.exceptions.UpdateFinishedTrialError):
        return Outcome(Kind.STALE)
    if isinstance(e, optuna.TrialPruned):
        return Outcome(Kind.PRUNED)
    # The traceback holds the trainer's frames (model, optimizer, compiled graph): clear their
    # locals so that the trial's GPU memory can be freed while the outcome is held. File and line
    # stay, so the traceback still reads as it should.
    traceback.clear_frames(e.__traceback__)
    if isinstance(e, DataError):
        return Outcome(Kind.DATA_ERROR, error=e)
    return Outcome(Kind.FAILED, note=f"{type(e).__name__}: {e}".splitlines()[0][:500], error=e)


def outcome_of(objective: Callable[[optuna.Trial], Any], trial: optuna.Trial) -> Outcome:
    """Run `objective` on `trial`: the Outcome an Objective returns, or that of a plain Optuna
    objective (tests, benchmarks), from the value it returns or what it raises."""
    try:
        returned = objective(trial)
    except (Exception, KeyboardInterrupt) as e:
        return caught(e)
    return returned if isinstance(returned, Outcome) else Outcome(Kind.RETURNED, returned)


def start(trial: optuna.Trial, worker: str) -> None:
    """Mark `trial` as running in `worker`: a retry's inherited outcome is reset."""
    trial.set_user_attr(record.STATUS_ATTR, Status.RUNNING)
    trial.set_user_attr(record.FAIL_REASON_ATTR, None)
    trial.set_user_attr(record.WORKER_ATTR, worker)


def settle(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> FrozenTrial | None:
    """Act on a trial's outcome (see the module doc); the trial as told, or None where another
    worker had failed it as stale meanwhile (it queued the retry, which goes on from the
    checkpoints kept here)."""
    meaning = outcome.meaning
    stale = outcome.kind == Kind.STALE
    if not stale:
        try:  # the attrs first: a finished trial's can no longer be written
            if meaning.status is not None:
                trial.set_user_attr(record.STATUS_ATTR, meaning.status)
            if outcome.reason is not None:
                trial.set_user_attr(record.FAIL_REASON_ATTR, outcome.reason)
            if not meaning.retried and outcome.sweep is not None:
                trial.set_user_attr(record.CHECKPOINT_ATTR, None)
        except optuna.exceptions.UpdateFinishedTrialError:
            stale = True
    if not meaning.retried and not stale and outcome.sweep is not None:  # the line of attempts ends here
        outcome.sweep()
    if outcome.kind == Kind.FAILED:  # its fail_reason says what; the traceback for a debug log
        log.debug("trial %d raised", trial.number, exc_info=outcome.error)
    state = outcome.state if outcome.state is not None else TrialState.FAIL  # stale: told FAIL already
    value = outcome.value if state == TrialState.COMPLETE else None
    try:
        told = study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:  # a tell re-run after a lost reply that the
        told = compat.frozen(trial)  # server had saved (search/storage/reconnect.py): it is told already
    if stale or told.state != state:
        # Our heartbeats missed the grace period (this process was frozen, or its disk or network
        # stalled) and another worker failed the trial and queued its retry, which carries on.
        log.warning("trial %d was failed by another worker while this one was paused; its retry goes on", told.number)
        return None
    if meaning.retried:
        retry(study, told)
    return told


# ------------------------------------------------------------------------------- re-queueing
def fail_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed: its fail_reason, or Reason.DIED for one failed by a heartbeat check,
    which leaves the attrs as the dead worker wrote them (status still "running")."""
    reason = trial.user_attrs.get(record.FAIL_REASON_ATTR)
    if reason is None and trial.state == TrialState.FAIL and trial.user_attrs.get(record.STATUS_ATTR) == Status.RUNNING:
        return Reason.DIED
    return reason


def retry(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a retry of a failed trial, which resumes from its checkpoint: the storage's heartbeat
    retry callback, or the same callback where a storage has none (a gRPC proxy, a reader's storage
    without heartbeats)."""
    storage = compat.storage_of(study)
    with compat.experimental_ok():
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)() or retry_callback()
        callback(study, failed)


def requeue_dead(study: optuna.Study, pids: Collection[int] | None = None) -> list[int]:
    """Settle the RUNNING trials of dead worker processes of this host as Kind.DIED and queue their
    retries at once, rather than after the heartbeat's grace period; the failed trials' numbers.

    pids: processes known to have died (launch's children); None: every process of this host that
    no longer exists. Trials of other hosts are left to the heartbeat. (Containers that share the
    host's name but not its process table, e.g. Docker's --network host, must not share a study
    with the host's workers: their processes look dead from each other.)
    """
    died = MEANINGS[Kind.DIED]
    host = socket.gethostname()
    storage = compat.storage_of(study)
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, pid = record.worker(t)
        if where != host or not pid.isdigit():
            continue
        dead = int(pid) in pids if pids is not None else not record.alive(int(pid))
        if not dead:
            continue
        tid = compat.trial_id(t)
        try:  # a finished trial is refused: of processes that do this at once, one fails it and retries
            storage.set_trial_user_attr(tid, record.STATUS_ATTR, died.status)
            storage.set_trial_user_attr(tid, record.FAIL_REASON_ATTR, died.reason)
            if not storage.set_trial_state_values(tid, died.state):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # a heartbeat check or another worker was first
            continue
        retry(study, storage.get_trial(tid))
        done.append(t.number)
    return done
