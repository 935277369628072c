"""A run's limits besides its trial budget (the number of trials, search/worker/workers.py): a time budget (a
deadline) and patience in trials. "Budget" alone is the trial count everywhere else.

Both live in the study's user attrs, so every worker on every host, including one that joins
later, obeys the same ones: each `stl-tune run` sets both anew (`--time-budget 6h`: a deadline 6 h
from that run's start; without the options, none), and workers stop starting trials at the deadline.
A trial still running then stops at the end of its epoch, is checkpointed there and is queued to
resume from that epoch on the next run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search.record import DEADLINE_ATTR, PATIENCE_ATTR, PATIENCE_FROM_ATTR, counts
from stl_tune.search.state.trials import better


def now() -> datetime:
    return datetime.now(UTC)


def set_limits(study: optuna.Study, time_budget: timedelta | None, patience: int | None) -> datetime | None:
    """What `stl-tune run` does at its start: store the deadline `time_budget` from now and the
    patience, or clear them (a run without them has none); returns the deadline.

    The patience counts this run's trials: those queued when it starts (the recipe, --enqueue files,
    retries) and those created after; not earlier runs' trials, nor copied ones (--from-study)."""
    at = now() + time_budget if time_budget is not None else None
    study.set_user_attr(DEADLINE_ATTR, at.isoformat(timespec="seconds") if at is not None else None)
    study.set_user_attr(PATIENCE_ATTR, patience)
    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    study.set_user_attr(PATIENCE_FROM_ATTR, min(waiting, default=len(trials)) if patience else None)
    return at


def deadline(attrs: dict) -> datetime | None:
    """The deadline stored in a study's user attrs, if any."""
    value = attrs.get(DEADLINE_ATTR)
    return datetime.fromisoformat(value) if value else None


def time_left(attrs: dict) -> timedelta | None:
    """Time until the deadline (negative once past); None without one."""
    at = deadline(attrs)
    return None if at is None else at - now()


def trials_since_best(trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection, start: int = 0) -> int:
    """Finished (complete or pruned) trials that ended after the best complete one, in the order
    they ended, counting only trials numbered `start` or later that were not copied from another
    study; the best is over all trials."""
    finished = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.datetime_complete
    )
    best, since = None, 0
    for t in finished:
        if t.state == TrialState.COMPLETE and better(t.value, best, direction):
            best, since = t.value, 0
        elif t.number >= start and counts(t):
            since += 1
    return since


def stop_reason(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> str | None:
    """Why workers must not start another trial of this study, or None: the time budget is spent, or
    the patience in trials ran out. `trials`: the study's trials when the caller has them at hand."""
    attrs = study.user_attrs
    left = time_left(attrs)
    if left is not None and left <= timedelta(0):
        return f"time budget spent at {deadline(attrs):%Y-%m-%d %H:%M:%S} UTC"
    patience = attrs.get(PATIENCE_ATTR)
    if patience:
        trials = study.get_trials(deepcopy=False) if trials is None else trials
        since = trials_since_best(trials, study.direction, attrs.get(PATIENCE_FROM_ATTR) or 0)
        if since >= patience:
            return f"no better trial in the last {since} finished (--patience-trials {patience})"
    return None
