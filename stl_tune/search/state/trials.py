"""Study state: what the trials of a study say.

Counting (tally, count_states), the best trial (ranked, better) and the exact budget's claim check
(is_surplus). How each trial ended, and its retry, is search/state/outcome.py's; failing the trials whose
heartbeat went silent, search/storage/storages.py's.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search import record
from stl_tune.search.state.outcome import NOT_AN_ERROR, Reason, fail_reason
from stl_tune.search.storage.reconnect import database_of

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
        reason = fail_reason(tr)
        if tr.state == TrialState.COMPLETE:
            t.complete += 1
        elif tr.state == TrialState.PRUNED:
            t.pruned += 1
        elif tr.state == TrialState.RUNNING:
            t.running += 1
        elif tr.state == TrialState.WAITING:
            t.waiting += 1
            t.paused += reason == Reason.TIME_BUDGET  # a retry carries its predecessor's attrs
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
    """Step (2) of search/worker/workers.py's module doc: are N trials ahead of this one finished or in flight?"""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number and record.counts(t)]
    return len(ahead) >= n_trials
