"""The live view of a search: what every running trial is doing, and how long the study has left.

- In a terminal (View): a table under the workers' output, which keeps the finished trials' lines
  above it: the study's counts, best trial and time left, then one row per running trial (its
  worker, key parameters, epoch k of N, latest validation accuracy, seconds per epoch). It is drawn
  from the storage, so it shows the study's workers on every host; the process that runs workers
  here refreshes it (`stl-tune run`'s launcher after each poll, or a thread of a `stl-tune worker`
  started on its own).
- Otherwise (a log file, a scheduler's capture): plain lines, no control characters. Each worker
  writes its trials' progress itself (search/worker/epochlog.py), and the study's line with the time left
  comes when the count of finished trials changes.
The time left is search/views/eta.py's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from stl_tune.search import record
from stl_tune.search.fmt import best_line, secs, short_params
from stl_tune.search.record import SPEC_ATTR
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state.trials import Tally, tally
from stl_tune.search.views.eta import left_or_stopped, study_epochs, trial_pace

MAX_ROWS = 10  # running trials listed in the table; the rest are counted in one more row

log = logging.getLogger(__name__)


class View:
    """The view of study `study` with budget `n_trials`, drawn on `console`: a live table on a
    terminal, else the study's line whenever the count of finished trials changes.

    workers: {pid: name} of the worker processes of this host ("w0", ...): their trials come first
    in the table; other workers are shown as host:pid. procs: processes launched here, counted as
    alive or not.
    """

    def __init__(
        self,
        study: optuna.Study,
        n_trials: int,
        console: Console,
        workers: Mapping[int, str],
        *,
        procs: Sequence[Any] = (),
    ):
        self.study, self.n_trials, self.console, self.procs = study, n_trials, console, procs
        host = socket.gethostname()
        self.names = {f"{host}:{pid}": name for pid, name in workers.items()}
        attrs = study.user_attrs
        self.spec = StudySpec.from_dict(attrs[SPEC_ATTR]) if SPEC_ATTR in attrs else None  # None: not stl-tune's
        self.epochs = study_epochs(self.spec) if self.spec is not None else None
        self.live = Live(console=console, refresh_per_second=2) if console.is_terminal else None
        self._finished: int | None = None  # at the last line written (no terminal)

    def __enter__(self) -> View:
        self.refresh()
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def refresh(self) -> None:
        """Redraw the table (a terminal), or write the study's line when a trial has finished."""
        trials = self.study.get_trials(deepcopy=False)  # one read for the counts and the rows
        t = tally(self.study, trials=trials)
        if self.live is None and t.finished == self._finished:
            return  # a log writes only when a trial has finished
        left = left_or_stopped(self.study, trials, self.n_trials, t.finished, self.spec)
        if self.live is not None:
            running = sorted((tr for tr in trials if tr.state == TrialState.RUNNING), key=self._order)
            self.live.update(self.render(t, running, left))
        else:
            self._finished = t.finished
            self.console.print(Text(self.line(t, left)), soft_wrap=True)

    @contextlib.contextmanager
    def following(self, every: float) -> Iterator[View]:
        """Inside, a thread refreshes the table every `every` seconds (for a worker whose main
        thread runs trials); a failed read (the database restarting) skips a refresh, never the
        worker. In a log there is no thread: the worker calls refresh() when a trial ends."""
        if self.live is None:
            with self:
                yield self
            return
        done = threading.Event()

        def loop() -> None:
            while not done.wait(every):
                try:
                    self.refresh()
                except Exception:
                    log.debug("live view: refresh failed", exc_info=True)

        thread = threading.Thread(target=loop, name="stl-tune-view", daemon=True)
        with self:
            thread.start()
            try:
                yield self
            finally:
                done.set()
                thread.join(timeout=5)

    # ------------------------------------------------------------------------------- drawing
    def render(self, t: Tally, running: list[FrozenTrial], left: str) -> Group:
        """The terminal's view: two lines on the study, then the running trials, fitted to the width."""
        table = Table()
        table.add_column("trial", justify="right", no_wrap=True, min_width=5)
        table.add_column("worker", no_wrap=True, overflow="ellipsis", min_width=6, max_width=14)
        table.add_column("epoch", justify="right", no_wrap=True, min_width=7)
        table.add_column("val", justify="right", no_wrap=True, min_width=6)
        table.add_column("s/epoch", justify="right", no_wrap=True, min_width=7)
        table.add_column("params")  # wrappable, so the one to narrow; its cells end in an ellipsis instead
        for tr in running[:MAX_ROWS]:
            params = Text(short_params(tr.params), no_wrap=True, overflow="ellipsis")
            table.add_row(str(tr.number), self._name(tr), self._epoch(tr), _val(tr), _pace(tr), params)
        if len(running) > MAX_ROWS:
            table.add_row("", f"{len(running) - MAX_ROWS} more", "", "", "", "")
        alive = sum(p.poll() is None for p in self.procs)
        here = f" ({alive}/{len(self.procs)} workers here alive)" if self.procs else ""
        head = Text(f"{self.line(t)}\n{t.running} running{here}; {left}")
        return Group(head, table) if running else head

    def line(self, t: Tally, left: str | None = None) -> str:
        """The study in one line: counts, best trial and, given one, the time left (left_or_stopped)."""
        line = (
            f"study {self.study.study_name}: {t.finished}/{self.n_trials} finished ({t.pruned} pruned), "
            f"{t.failed} failed, {t.waiting} queued; {best_line(t.best)}"
        )
        return line if left is None else f"{line}; {left}"

    def _order(self, tr: FrozenTrial) -> tuple[int, str, int]:
        name = self.names.get(tr.user_attrs.get(record.WORKER_ATTR))
        return (name is None, name or "", tr.number)

    def _name(self, tr: FrozenTrial) -> str:
        host, pid = record.worker(tr)
        return self.names.get(f"{host}:{pid}") or f"{host.split('.')[0]}:{pid or '?'}"

    def _epoch(self, tr: FrozenTrial) -> str:
        total = record.epochs(tr, self.epochs) if self.epochs is not None else None
        return f"{len(record.curve(tr))}/{total if total is not None else '?'}"


def _val(tr: FrozenTrial) -> str:
    curve = record.curve(tr)
    return f"{curve[-1]:.4f}" if curve and curve[-1] is not None else "-"


def _pace(tr: FrozenTrial) -> str:
    pace = trial_pace(tr)
    return secs(pace) if pace is not None else "-"
