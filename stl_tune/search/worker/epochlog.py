"""A worker's log lines, where its output is no terminal (a log file, a scheduler's capture): the
trials it runs, a line on each one's first epoch, then one per epoch at most every LOG_EVERY_S,
written from the trainer's epoch callback, so a log costs the database nothing. The study's line
is the live view's (search/views/live.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from rich.console import Console
from rich.text import Text

from stl_tune.search.fmt import secs, short_params

if TYPE_CHECKING:
    from stl_tune.config import TrainConfig
    from stl_tune.search.worker.objective import Objective, Trainer
    from stl_tune.train import EpochMetrics

LOG_EVERY_S = 5.0  # a trial's progress line in a log, at most this often


class EpochLog:
    """Progress lines of the trials this process runs, for a log: a trial's first epoch, then one
    line per epoch at most every `every` seconds, written from the trainer's epoch callback:

        work(study, EpochLog(console).around(Objective(spec, artifacts)), n_trials)
    """

    def __init__(self, console: Console, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.console, self.every, self.clock = console, every, clock
        self._trial: optuna.Trial
        self._last = -math.inf  # clock at the current trial's last line

    def around(self, objective: Objective) -> Callable[[optuna.Trial], Any]:
        """`objective`, its trainer writing the lines of the trial it runs."""
        objective.trainer = self._trainer(objective.trainer)

        def run(trial: optuna.Trial) -> Any:
            self._trial, self._last = trial, -math.inf
            return objective(trial)

        return run

    def _trainer(self, trainer: Trainer) -> Trainer:
        """`trainer` (stl_tune.train.train's signature), writing a line after its epoch callbacks."""

        def run(cfg: TrainConfig, on_epoch_end: Callable[[EpochMetrics], bool | None] | None = None, **kw: Any):
            def callback(m: EpochMetrics) -> bool | None:
                stop = on_epoch_end(m) if on_epoch_end is not None else None
                self._line(cfg, m)
                return stop

            return trainer(cfg, callback, **kw)

        return run

    def _line(self, cfg: TrainConfig, m: EpochMetrics) -> None:
        now = self.clock()
        if now - self._last < self.every:
            return
        first, self._last = self._last == -math.inf, now
        trial = self._trial  # set by around(), the only way in
        val = f"{m.val_acc:.4f}" if m.val_acc is not None else "-"
        line = f"trial {trial.number}: epoch {m.epoch}/{cfg.optim.epochs}, val {val}, {secs(m.seconds)} s/epoch"
        if first:  # its first line says what it tries
            line += f" ({short_params(trial.params)})"
        self.console.print(Text(line), soft_wrap=True)  # Text: no markup; soft_wrap: one line at any width
