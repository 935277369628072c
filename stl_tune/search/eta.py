"""How long things take: the time a study has left, and what one trial costs on this host.

Time left, from the storage alone (the live view and `stl-tune status` show the same figure):

    (epochs the trials still to run are expected to train) x (seconds per epoch) / (trials running)

- A trial runs T epochs, T distributed as the study's pruner stops trials (EpochsRun): successive
  halving keeps the best 1/eta of the trials at each rung, Hyperband spreads trials over such
  schedules as Optuna allocates them; with a median pruner or none, every trial counts at full length.
- A trial not started yet is expected to train E[T] epochs; a running one at epoch k, E[T | T >= k] - k.
- Seconds per epoch: a running trial's own median epoch time (its user attr "epoch_seconds"; the
  median leaves out a first epoch slowed by compilation); for a trial not started yet, the mean of
  the medians of every trial measured so far, each trial one sample of the search space's cost.
- Trials run side by side: one per RUNNING trial, at least one.
Not counted: model building and data loading at a trial's start, failures, trials that stop early
on their own (eval.patience).

What one trial costs here (`trial_cost`): on a host without a GPU, before the first trial, training
steps of a few images at the study's first config (reference_config) are timed on random data and
scaled to a full trial.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from stl_tune import config
from stl_tune.config import TrainConfig
from stl_tune.search.space import HYPERBAND, PRUNERS, StudySpec
from stl_tune.search.warmstart import ENQUEUED_ATTR

EPOCH_SECONDS_ATTR = "epoch_seconds"  # trial user attr: wall time of each epoch this attempt ran


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
    seconds = trial.user_attrs.get(EPOCH_SECONDS_ATTR)
    return statistics.median(seconds) if seconds else None


def epochs_done(trial: FrozenTrial) -> int:
    """Epochs a trial has finished, those taken over from a checkpoint included."""
    return len(trial.user_attrs.get("curve") or [])


def trial_epochs(trial: FrozenTrial, default: int) -> int:
    """A trial's optim.epochs (from its stored config), else `default`."""
    return (trial.user_attrs.get("config") or {}).get("optim", {}).get("epochs", default)


@dataclass
class Estimate:
    seconds: float | None  # time left; None until an epoch has been measured
    to_start: int  # trials the budget still needs besides the running ones
    running: int
    epochs: int  # a trial's full length
    expected_epochs: float  # epochs a trial is expected to run under the pruner
    pace: float | None  # seconds per epoch of a trial not started yet

    def __str__(self) -> str:
        if self.seconds is None:
            return "time left: known after the first epoch"
        if self.seconds == 0:
            return "done"
        return f"about {duration(self.seconds)} left" if self.seconds >= 60 else "less than a minute left"

    def detail(self) -> str:
        """What the figure rests on, in one line."""
        pace = f", {secs(self.pace)} s/epoch" if self.pace is not None else ""
        if self.seconds == 0:
            return f"0 trials to start, none running{pace}"
        running = f"{self.running} running" if self.running else "none running, so counted as one worker"
        return (f"{self.to_start} trials to start, {running}; a trial is expected to run "
                f"{self.expected_epochs:.0f} of {self.epochs} epochs under the pruner{pace}")  # fmt: skip


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
    queued = min(to_start, sum(t.state == TrialState.WAITING and ENQUEUED_ATTR in t.user_attrs for t in trials))
    work = ((to_start - queued) * result.expected_epochs + queued * epochs) * pace
    for t in running:
        n, done = trial_epochs(t, epochs), epochs_done(t)
        left = n - done if ENQUEUED_ATTR in t.user_attrs else run_of(n).left(done)
        work += left * (trial_pace(t) or pace)
    result.seconds = work / max(1, len(running))
    return result


def secs(seconds: float) -> str:
    """A few seconds to 3 significant digits, many to the second: '0.214', '45.3', '1234'."""
    return f"{seconds:.3g}" if seconds < 100 else f"{seconds:.0f}"


def duration(seconds: float) -> str:
    """'45 s', '12 min', '5 h 20 min', '2.6 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    if minutes < 36 * 60:
        h, m = divmod(round(minutes), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------------ one trial on this host
def reference_config(spec: StudySpec) -> TrainConfig:
    """The study's first config: the known recipe (defaults and `fixed`), each searched value that
    lies outside its range moved to the nearest bound (a categorical one to its first choice)."""
    cfg = config.from_dict(None, spec.fixed)
    for p in spec.params:
        if not p.applies(cfg):
            continue
        value = config.get(cfg, p.path)
        if p.kind == "categorical":
            value = value if value in (p.choices or []) else p.choices[0]
        else:
            value = min(max(value, p.low), p.high)
        config.set_path(cfg, p.path, value)
    return config.validate(cfg)


@dataclass
class TrialCost:
    steps: int  # optimizer steps per epoch
    step_s: float  # seconds per training step
    eval_s: float  # seconds of validation per epoch
    epochs: int

    @property
    def seconds(self) -> float:
        return self.epochs * (self.steps * self.step_s + self.eval_s)


PROBE_S = 1.0  # seconds: a full batch expected to take less is timed rather than scaled from small steps
PROBE_IMAGES = 4  # images a timed small step trains on (BatchNorm needs 2 where the last stage is 1 pixel)


def trial_cost(cfg: TrainConfig, train_images: int, threads: int, num_classes: int = 10) -> TrialCost:
    """What one full trial of `cfg` costs on this host's CPU with `threads` torch threads, from
    timed training steps on random data (the class count only sizes the last layer).

    Two steps of PROBE_IMAGES images are timed after one to warm up, and the faster counts. When a
    full batch would take under PROBE_S it is timed instead; else the forward-backward time is
    scaled to the batch and the optimizer step added once. Validation: the faster of two forward
    passes, per image, twice with flip TTA, over train_images * f / (1 - f) images
    (f = data.val_fraction). Augmentation is left out.
    Measured with benchmarks/bench_startup_probe.py on the 2-core dev VM, busy (load 4-6),
    2026-11-28, at the recipe's size (width 64, 96 px, batch 64), 4 runs: the probe took 23-32 s
    and projected 70-83 s a step where a timed batch of 64 took 35-71 s (1.0-2.4x), 13-14 days a
    trial. Steps of one image projected 0.3x to 10x there (a step of one image ran 3.5 s, then
    0.6 s): hence 4 images and the faster of two.
    """
    import torch
    import torch.nn.functional as F

    from stl_tune.model import build_model
    from stl_tune.train import make_optimizer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(cfg.model, num_classes)
        opt = make_optimizer(model, cfg.optim, fused=False)
        size = cfg.data.image_size

        def step(n: int) -> tuple[float, float]:
            """(forward-backward, optimizer) seconds of one step of n images."""
            x, y = torch.rand(n, 3, size, size), torch.randint(num_classes, (n,))
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            return t1 - t0, time.perf_counter() - t1

        n = min(PROBE_IMAGES, cfg.optim.batch_size)
        step(n)
        fb, opt_s = min((step(n) for _ in range(2)), key=sum)
        batch = cfg.optim.batch_size
        step_s = fb / n * batch + opt_s
        if step_s < PROBE_S and batch > n:
            step_s = sum(step(batch))
        model.eval()
        with torch.no_grad():
            forward = min(_seconds(lambda: model(torch.rand(n, 3, size, size))) for _ in range(2)) / n
    finally:
        torch.set_num_threads(before)
    f = cfg.data.val_fraction
    val_images = train_images * f / (1 - f)
    eval_s = val_images * forward * (2 if cfg.eval.tta else 1)
    return TrialCost(steps=train_images // batch, step_s=step_s, eval_s=eval_s, epochs=cfg.optim.epochs)


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
