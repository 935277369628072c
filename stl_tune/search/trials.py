"""Study state: what the trials of a study say, and the moves that keep it right.

Counting (tally, the best trial: ranked, better), the exact budget's claim check (is_surplus), and
re-queueing: of interrupted trials, of trials whose worker process died on this host
(requeue_dead) and of trials whose heartbeat went silent (fail_stale_trials). Re-queueing is
Optuna's RetryHeartbeatStaleTrialCallback in every case (retry_callback): a new WAITING trial with
the same params and user attrs, which resumes from the failed one's checkpoint (search/objective.py).
"""

from __future__ import annotations

import functools
import os
import socket
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search import optuna_compat as compat
from stl_tune.search import record
from stl_tune.search.reconnect import database_of

MAX_RETRY = 3  # re-runs of a trial whose worker died, as a new trial with the same params
T = TypeVar("T")


@dataclass
class Tally:
    trials: int = 0  # all of them, surplus and interrupted ones too
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # errors, divergence and dead workers (not surplus or interrupted trials)
    running: int = 0
    waiting: int = 0
    paused: int = 0  # of the waiting: retries of trials the time budget paused (they resume a checkpoint)
    failure_streak: int = 0  # trials that ended most recently and all failed with an error
    last_failure: str = ""
    best: FrozenTrial | None = None
    states: Counter[TrialState] = field(default_factory=Counter)  # every trial, as count_states counts

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def better(a: float, b: float | None, direction: StudyDirection) -> bool:
    """Whether value `a` beats `b` in a study of `direction` (anything beats None): the one
    comparison of values behind the best trial, the patience and the best confirmed mean."""
    if b is None:
        return True
    return a > b if direction == StudyDirection.MAXIMIZE else a < b


def best_first(direction: StudyDirection, value: Callable[[T], float]) -> Callable[[T], object]:
    """A sort key that orders items best first by `value` (ties keep their order)."""

    def order(x: T, y: T) -> int:
        return -1 if better(value(x), value(y), direction) else int(better(value(y), value(x), direction))

    return functools.cmp_to_key(order)


def ranked(trials: Iterable[FrozenTrial], direction: StudyDirection) -> list[FrozenTrial]:
    """The COMPLETE trials, best first: the one definition of "the best trial" (tally, status,
    export and the report all use it)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    return sorted(done, key=best_first(direction, lambda t: t.value))


def tally(study: optuna.Study, since: datetime | None = None, trials: list[FrozenTrial] | None = None) -> Tally:
    """Counts of the study's trials (copied ones left out; the best is over all); the failure
    streak only among trials started after `since` (a worker's start), so a re-run after fixing the
    cause is not stopped by old failures. `trials`: the study's, when the caller has read them."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    t = Tally(trials=len(trials), states=Counter(tr.state for tr in trials))
    ended = []
    for tr in filter(record.counts, trials):
        reason = record.fail_reason(tr)
        if tr.state == TrialState.COMPLETE:
            t.complete += 1
        elif tr.state == TrialState.PRUNED:
            t.pruned += 1
        elif tr.state == TrialState.RUNNING:
            t.running += 1
        elif tr.state == TrialState.WAITING:
            t.waiting += 1
            t.paused += reason == record.Reason.TIME_BUDGET  # a retry carries its predecessor's attrs
        elif tr.state == TrialState.FAIL and reason not in record.NOT_AN_ERROR:
            t.failed += 1
        if tr.state.is_finished() and (tr.state != TrialState.FAIL or reason not in record.NOT_AN_ERROR):
            ended.append(tr)
    ended.sort(key=lambda tr: tr.datetime_complete)
    for tr in reversed(ended):
        if since is not None and (tr.datetime_start is None or tr.datetime_start < since):
            break
        if tr.state != TrialState.FAIL:
            break
        t.failure_streak += 1
        t.last_failure = t.last_failure or record.fail_reason(tr)
    best = ranked(trials, study.direction)  # from the trials at hand: study.best_trial would query again
    t.best = best[0] if best else None
    return t


def count_states(study: optuna.Study) -> Counter[TrialState]:
    """The study's trials per state, all of them (Tally.states of a tally made now). On a server
    the database counts them in one statement that returns a few numbers and reads no params, attrs
    or reports: what waiting workers poll (a tally re-reads every unfinished trial with all of
    those, in up to seven statements). Elsewhere from the trials."""
    found = database_of(study)
    if found is not None:
        storage, study_id = found
        return storage.count_states(study_id)
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def is_surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Step (2) of search/workers.py's module doc: are N trials ahead of this one finished or in flight?"""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number and record.counts(t)]
    return len(ahead) >= n_trials


# ------------------------------------------------------------------------------- re-queueing
def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """What happens to a trial whose worker died or was interrupted: a new trial with the same
    params and user attrs, that resumes from the dead one's checkpoint. Its intermediate values
    are not inherited: the dead trial may have reported epochs past its last checkpoint, which the
    retry trains (and reports) again; the objective reports the epochs up to the checkpoint."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's retry callback, re-queue) the study's RUNNING trials whose
    heartbeat is older than the grace period."""
    with compat.experimental_ok():
        optuna.storages.fail_stale_trials(study)


def requeue_stopped(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a retry of a trial that was stopped rather than failed (a RESUMABLE fail_reason: Ctrl-C,
    the time budget, bad data) and told FAIL; the retry resumes from its checkpoint."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get(record.FAIL_REASON_ATTR) in record.RESUMABLE:
        retry(study, trial)


def retry(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a retry of a failed trial: the storage's heartbeat retry callback, or the same callback
    where a storage has none (a gRPC proxy, a reader's storage without heartbeats)."""
    storage = compat.storage_of(study)
    with compat.experimental_ok():
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)() or retry_callback()
        callback(study, failed)


def requeue_dead(study: optuna.Study, pids: Collection[int] | None = None) -> list[int]:
    """Fail the RUNNING trials of dead worker processes of this host (Reason.DIED) and queue
    their retries at once, rather than after the heartbeat's grace period; the failed trials' numbers.

    pids: processes known to have died (launch's children); None: every process of this host that
    no longer exists. Trials of other hosts are left to the heartbeat. (Containers that share the
    host's name but not its process table, e.g. Docker's --network host, must not share a study
    with the host's workers: their processes look dead from each other.)
    """
    host = socket.gethostname()
    storage = compat.storage_of(study)
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, pid = record.worker(t)
        if where != host or not pid.isdigit():
            continue
        dead = int(pid) in pids if pids is not None else not alive(int(pid))
        if not dead:
            continue
        tid = compat.trial_id(t)
        try:  # a finished trial is refused: of processes that do this at once, one fails it and retries
            storage.set_trial_user_attr(tid, record.STATUS_ATTR, record.Status.DIED)
            storage.set_trial_user_attr(tid, record.FAIL_REASON_ATTR, record.Reason.DIED)
            if not storage.set_trial_state_values(tid, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # a heartbeat check or another worker was first
            continue
        retry(study, storage.get_trial(tid))
        done.append(t.number)
    return done


def alive(pid: int) -> bool:
    """Whether process `pid` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
