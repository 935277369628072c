"""The worker loop: ask for a trial, verify the claim, run it, settle its outcome, stop cleanly.

Exactly N finished trials (COMPLETE or PRUNED) across any number of processes and hosts:
  1. Before asking for a trial, a worker counts the study: it stops once N trials have finished,
     and waits while finished + RUNNING >= N (those in flight may still fill the budget; WAITING
     trials, such as retries of dead workers' trials, are what the next ask() takes first).
  2. That check races with other workers, so right after ask() the new trial verifies its claim:
     it runs only if fewer than N trials with a smaller number are COMPLETE, PRUNED, RUNNING or
     WAITING; otherwise it ends at once as FAIL with fail_reason surplus (and counts for nothing).
  Why this is exact: a trial's number is fixed when it is created, under a lock on the study row,
  so every smaller-numbered trial is already visible when a trial verifies, and trial states only
  move forward (WAITING -> RUNNING -> COMPLETE | PRUNED | FAIL). If N+1 trials finished, the one
  with the largest number saw the other N (or their earlier, unfinished states) when it verified,
  and would have been surplus. Conversely a surplus verdict needs N live trials ahead of it, so
  the budget is never left short: the loop in (1) starts new trials until N have finished, also
  after failures (which never count), and the same rules hold on a re-run of the same command.
How each trial ended is an Outcome, which search/state/outcome.py settles (records, tells Optuna, queues
the retry). A data error in a trial (the data, not the trial) stops the worker with its line at
once; the trial is queued again, as an interrupted one is. Failures (errors, divergence) do not
count towards N; when the last `max_failures` trials to end since a worker started all failed, the
study is hopeless and the worker stops with that message.

Dead workers: each RUNNING trial has a heartbeat (storages.open_storage); a trial silent for the grace
period is failed and re-queued as WAITING by the storage's retry callback, and the objective
resumes it from its last checkpoint (search/storage/storages.py). Optuna checks for stale trials only when
asked, so this loop checks before every trial and while it waits; otherwise the last live workers
could wait forever on a dead one's RUNNING trial. A worker that was only frozen (SIGSTOP, a closed
laptop lid, a long pause) and wakes to find its trial failed by another drops it with one line and
goes on: the retry carries the trial from its checkpoint.

Ctrl-C / SIGTERM: the first lets the epoch under way finish, has the trainer checkpoint it (the
objective's stop_requested) and stops the trial there, an interrupted outcome: the trial is failed
with fail_reason interrupted and re-queued, so the next run resumes at that epoch, then exits. A second signal
stops at once (the retry resumes from the last checkpoint), as does the first while no trial trains.
The loop asks and tells itself rather than through Study.optimize, so that neither a stopped nor a
stale trial is logged by Optuna as a failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune.errors import UserError
from stl_tune.search import optuna_compat as compat
from stl_tune.search.record import QUEUED_ONLY_ATTR
from stl_tune.search.state.limits import stop_reason
from stl_tune.search.state.outcome import RETRIED, Kind, Outcome, caught, fail_reason, outcome_of, settle
from stl_tune.search.state.trials import Tally, count_states, is_surplus, tally
from stl_tune.search.storage.storages import fail_stale_trials
from stl_tune.stop import Stop

POLL_S = 1.0  # a waiting worker's first pause between looks at the study ...
MAX_POLL_S = 10.0  # ... doubled while nothing changes, up to this (docs/BENCHMARKS.md, "Database load")

log = logging.getLogger(__name__)


class StudyStopped(UserError):
    """Every recent trial failed: running more would fail too."""


class Interrupted(KeyboardInterrupt):
    """A stop signal ended the worker's trial, which is settled as interrupted and re-queued (up to
    storages.MAX_RETRY times): `trial` as told, for the worker's line on where it stopped."""

    def __init__(self, trial: FrozenTrial) -> None:
        super().__init__()
        self.trial = trial


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    max_failures: int = 5,
    poll_s: float = POLL_S,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    stop: Stop | None = None,
) -> Tally:
    """Run trials in this process until the study has `n_trials` finished ones (see module doc), or
    its time budget or patience runs out (search/state/limits.py: limits.stop_reason says which).
    callbacks: as study.optimize's, called with each trial this worker ran to its end.
    stop: the objective's stop_requested, to stop a trial at an epoch's end on a first signal.

    Raises StudyStopped when the last `max_failures` trials failed, DataError when a trial found the
    data bad (the trial is queued again, so a queued recipe still runs once the data is fixed),
    KeyboardInterrupt on a signal.
    """
    started = datetime.now()  # Optuna's timestamps are local time too
    queued_only = bool(study.user_attrs.get(QUEUED_ONLY_ATTR))  # a confirm study: never sample a trial
    waited_for: set[int] = set()  # failed trials whose retry this worker has waited for once
    stop = stop if stop is not None else Stop()
    with stop:
        while not stop.requested:
            trials = study.get_trials(deepcopy=False)  # one read for the tally and the patience check
            t = tally(study, since=started, trials=trials)
            if t.finished >= n_trials or stop_reason(study, trials) is not None:
                return t
            if t.failure_streak >= max_failures:
                raise StudyStopped(
                    f"stopping: the last {t.failure_streak} trials failed (last: {t.last_failure}); "
                    "see `stl-tune status` and the trials' fail_reason"
                )
            fail_stale_trials(study)  # before ask(), as Study.optimize does: retries come first
            if queued_only and t.waiting == 0 and t.running == 0:
                due = _retries_due(trials) - waited_for
                if not due:
                    return t  # every queued trial has ended (a failed one is reported, not replaced)
                # Whoever fails a dead worker's (or a stopped) trial queues its retry right after:
                # between the two this worker would see nothing left to run and leave the retry to
                # no one. It waits for it once, at most MAX_POLL_S (none comes after MAX_RETRY).
                waited_for |= due
                _wait_for_a_change(study, t, stop, poll_s, within=MAX_POLL_S)
                continue
            if t.finished + t.running >= n_trials or (queued_only and t.waiting == 0):
                _wait_for_a_change(study, t, stop, poll_s)
                continue
            frozen = _run_trial(study, objective, n_trials, stop)
            if frozen is None:
                continue
            for callback in callbacks or []:
                callback(study, frozen)
        raise KeyboardInterrupt


def _wait_for_a_change(
    study: optuna.Study, seen: Tally, stop: Stop, poll_s: float, within: float | None = None
) -> None:
    """Sleep until a trial of the study changes state after the tally `seen` (one ends, a retry is
    queued, another worker claims one), failing stale trials meanwhile, or until `within` seconds
    have passed; the caller then tallies anew. Each look is one count by the database
    (trials.count_states), and the pause doubles from poll_s up to MAX_POLL_S while nothing changes:
    idle workers at the end of a long search cost the database little, and notice a change within
    MAX_POLL_S."""
    pause, until = poll_s, None if within is None else time.monotonic() + within
    while True:
        with stop.interruptible():
            time.sleep(pause if until is None else max(0.0, min(pause, until - time.monotonic())))
        fail_stale_trials(study)
        if count_states(study) != seen.states or (until is not None and time.monotonic() >= until):
            return
        pause = min(2 * pause, max(poll_s, MAX_POLL_S))


def _retries_due(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the failed trials that are retried (their worker died, or they were stopped: see
    outcome.MEANINGS) and have no retry queued yet."""
    retried = {history[-1] for t in trials if (history := compat.retry_history(t))}
    return {
        t.number for t in trials if t.state == TrialState.FAIL and fail_reason(t) in RETRIED and t.number not in retried
    }


def _run_trial(
    study: optuna.Study, objective: Callable[[optuna.Trial], Any], n_trials: int, stop: Stop
) -> FrozenTrial | None:
    """Ask for one trial, run it with a heartbeat and settle its outcome (search/state/outcome.py); the
    trial as told, or None for one that another worker failed as stale meanwhile. Raises
    Interrupted on a stop signal and the DataError of a data error, each once its trial is
    re-queued."""
    trial = compat.ask(study)
    with compat.heartbeat(study, trial):
        try:
            with stop.interruptible(soft=True):  # a first signal ends the trial at its epoch's end
                surplus = is_surplus(study, trial, n_trials)
                outcome = Outcome(Kind.SURPLUS) if surplus else outcome_of(objective, trial)
        except KeyboardInterrupt as e:  # a signal before the objective began
            outcome = caught(e)
    told = settle(study, trial, outcome)
    if outcome.kind == Kind.INTERRUPTED and told is not None:
        raise Interrupted(told)
    if outcome.kind == Kind.DATA_ERROR:  # every trial would fail the same way: stop with the data's one line
        raise outcome.error
    return told
