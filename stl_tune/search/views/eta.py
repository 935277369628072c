"""The time a study has left, from the storage alone, and the line on it that the live view and
`stl-tune status` show (left_or_stopped):

    (epochs the trials still to run are expected to train) x (seconds per epoch) / (trials running)

- A trial runs T epochs, T distributed as the study's pruner stops trials (EpochsRun): successive
  halving keeps the best 1/eta of the trials at each rung, Hyperband spreads trials over such
  schedules as Optuna allocates them; with a median pruner or none, every trial counts at full length.
- A trial not started yet is expected to train E[T] epochs; a running one at epoch k, E[T | T >= k] - k.
- Seconds per epoch: a running trial's own median epoch time (its user attr epoch_seconds; the
  median leaves out a first epoch slowed by compilation); for a trial not started yet, the mean of
  the medians of every trial measured so far, each trial one sample of the search space's cost.
- Trials run side by side: one per RUNNING trial, at least one.
Not counted: model building and data loading at a trial's start, failures, trials that stop early
on their own (eval.patience).

What one trial costs on this host before any has run is search/worker/probe.py; how the figures read, search/fmt.py.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from stl_tune import config
from stl_tune.search import record
from stl_tune.search.fmt import duration, secs
from stl_tune.search.spec.space import HYPERBAND, PRUNERS, StudySpec
from stl_tune.search.state.limits import stop_reason


# ----------------------------------------------------------------------------- epochs per trial
@dataclass(frozen=True)
class EpochsRun:
    """The epochs a trial runs under the study's pruner, as a distribution {epochs: probability}."""

    stops: Mapping[int, float]

    @classmethod
    def under(cls, pruner: Mapping[str, Any], epochs: int) -> EpochsRun:
        """For a spec's pruner options (StudySpec.pruner) and trials of `epochs` epochs."""
        name = pruner.get("name", "none")
        options = {k: v for k, v in pruner.items() if k != "name"}
        if name in PRUNERS:  # what the study file leaves out, the pruner's own defaults fill in
            for key, param in inspect.signature(PRUNERS[name]).parameters.items():
                options.setdefault(key, param.default)
        if name == "successive_halving":
            # Optuna's "auto" min_resource: the longest complete trial's steps / 100, at least 1
            low = options["min_resource"] if options["min_resource"] != "auto" else max(epochs // 100, 1)
            return cls(_halving(low, options["reduction_factor"], options["min_early_stopping_rate"], epochs))
        if name in HYPERBAND:
            top = options["max_resource"] if options["max_resource"] != "auto" else epochs
            low, eta = options["min_resource"], options["reduction_factor"]
            n = math.floor(math.log(top / low, eta)) + 1  # as optuna.pruners.HyperbandPruner counts them
            # Bracket i halves from rung min_resource * eta^i; Optuna sends a trial to bracket i with
            # a probability proportional to ceil(n * eta^s / (s + 1)), s = n - 1 - i.
            budgets = [math.ceil(n * eta ** (n - 1 - i) / (n - i)) for i in range(n)]
            stops: dict[int, float] = {}
            for i, budget in enumerate(budgets):
                for e, p in _halving(low, eta, i, epochs).items():
                    stops[e] = stops.get(e, 0.0) + p * budget / sum(budgets)
            return cls(stops)
        return cls({epochs: 1.0})  # none, or median: no schedule to model, so the longest case

    def mean(self) -> float:
        return sum(e * p for e, p in self.stops.items())

    def left(self, done: int) -> float:
        """Expected epochs still to run for a trial that has run `done` epochs: E[T | T >= done] - done."""
        ahead = {e: p for e, p in self.stops.items() if e >= done}
        if not ahead:  # longer than modelled (a searched optim.epochs): it ends now
            return 0.0
        return sum(e * p for e, p in ahead.items()) / sum(ahead.values()) - done


def _halving(low: int, eta: int, rate: int, epochs: int) -> dict[int, float]:
    """Successive halving: rungs at low * eta^(rate + k) epochs, below `epochs`; at each, a trial goes
    on with probability 1/eta (the top 1/eta of the rung), else stops there."""
    stops: dict[int, float] = {}
    going, rung = 1.0, low * eta**rate
    while rung < epochs:
        stops[rung] = going * (1 - 1 / eta)
        going /= eta
        rung *= eta
    stops[epochs] = going
    return stops


def study_epochs(spec: StudySpec) -> int:
    """optim.epochs of the study's trials: `fixed` (or the default), or the middle of its range when searched."""
    for p in spec.params:
        if p.path == "optim.epochs":
            values = p.choices if p.kind == "categorical" else [p.low, p.high]
            return round(statistics.mean(values))
    return config.from_dict(None, spec.fixed).optim.epochs


# ------------------------------------------------------------------------------------ time left
def trial_pace(trial: FrozenTrial) -> float | None:
    """Median seconds per epoch of a trial, None before its first epoch."""
    seconds = trial.user_attrs.get(record.EPOCH_SECONDS_ATTR)
    return statistics.median(seconds) if seconds else None


@dataclass
class Estimate:
    seconds: float | None  # time left; None until an epoch has been measured
    to_start: int  # trials the budget still needs besides the running ones
    running: int
    epochs: int  # a trial's full length
    expected_epochs: float  # epochs a trial is expected to run under the pruner
    pace: float | None  # seconds per epoch of a trial not started yet

    @property
    def done(self) -> bool:
        """The budget is met: nothing to start, nothing running. (A trial past its last epoch's
        report, not yet told, leaves 0 s of epochs but is not done.)"""
        return self.seconds == 0 and self.to_start == 0 and self.running == 0

    def __str__(self) -> str:
        if self.seconds is None:
            return "time left: known after the first epoch"
        if self.done:
            return "done"
        return f"about {duration(self.seconds)} left" if self.seconds >= 60 else "less than a minute left"

    def detail(self) -> str:
        """What the figure rests on, in one line."""
        pace = f", {secs(self.pace)} s/epoch" if self.pace is not None else ""
        if self.done:
            return f"0 trials to start, none running{pace}"
        running = f"{self.running} running" if self.running else "none running, so counted as one worker"
        return (
            f"{self.to_start} trials to start, {running}; a trial is expected to run "
            f"{self.expected_epochs:.0f} of {self.epochs} epochs under the pruner{pace}"
        )


def estimate(trials: Iterable[FrozenTrial], n_trials: int, finished: int, spec: StudySpec) -> Estimate:
    """The study's time left (see module doc): `trials` as the storage has them, `n_trials` the
    budget, `finished` the trials that count as finished (trials.tally)."""
    trials = list(trials)
    epochs = study_epochs(spec)
    runs: dict[int, EpochsRun] = {}

    def run_of(n: int) -> EpochsRun:
        return runs.setdefault(n, EpochsRun.under(spec.pruner, n))

    paces = [p for p in map(trial_pace, trials) if p is not None]
    pace = statistics.mean(paces) if paces else None
    running = [t for t in trials if t.state == TrialState.RUNNING]
    to_start = max(0, n_trials - finished - len(running))
    result = Estimate(None, to_start, len(running), epochs, run_of(epochs).mean(), pace)
    if finished >= n_trials:
        result.seconds = 0.0
        return result
    if pace is None:
        return result
    # Queued trials (the known recipe, --enqueue, confirmations) are never pruned: full length.
    queued = min(to_start, sum(t.state == TrialState.WAITING and record.queued(t) for t in trials))
    work = ((to_start - queued) * result.expected_epochs + queued * epochs) * pace
    for t in running:
        n, done = record.epochs(t, epochs), len(record.curve(t))
        left = n - done if record.queued(t) else run_of(n).left(done)
        work += left * (trial_pace(t) or pace)
    result.seconds = work / max(1, len(running))
    return result


def left_or_stopped(
    study: optuna.Study,
    trials: list[FrozenTrial],
    n_trials: int,
    finished: int,
    spec: StudySpec | None,
    detail: bool = False,
) -> str:
    """The time left as the view and `stl-tune status` say it: once the time budget or the patience
    has run out, that no trial starts any more (an estimate of the trials still to start would be
    time that will not be spent); else the estimate (search/views/eta.py), with what it rests on when
    `detail`. `trials`: the study's, read once by the caller."""
    stopped = stop_reason(study, trials)
    if stopped is not None:
        return f"stopped: {stopped}"
    if spec is None:
        return "time left: unknown (no study file in the storage)"
    left = estimate(trials, n_trials, finished, spec)
    return f"{left} ({left.detail()})" if detail else str(left)
