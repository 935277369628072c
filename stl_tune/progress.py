"""Rich progress bars: one for a training run, driven by the trainer's on_epoch_end callback, and
one for decoding many images (stl_tune/data's prepare, evaluate, predict).

The trainer knows nothing about terminals: the command line wraps its call in the bar,

    with EpochProgress(cfg.optim.epochs) as bar:
        result = train(cfg, bar.on_epoch_end, checkpoint=...)

and passes `then=` to chain another callback (its return value, True to stop, goes to the trainer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# The epoch callbacks take the trainer's EpochMetrics; typed Any, since stl_tune.data (which the
# trainer imports) imports this module for its image bar: no import loop, even for type checkers.
EpochMetrics = Any

# Fewer images than this get no bar: they decode in a few seconds at most (docs/BENCHMARKS.md,
# "Decoding images").
IMAGE_PROGRESS_MIN = 1000


@contextlib.contextmanager
def image_progress(
    total: int, what: str = "decoding images", console: Console | None = None
) -> Iterator[Callable[[int], None] | None]:
    """A bar for `total` images to decode, yielding its advance(n), or None (no bar) for a few."""
    if total < IMAGE_PROGRESS_MIN:
        yield None
        return
    columns = TextColumn(what), MofNCompleteColumn(), BarColumn(), TimeRemainingColumn()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


class EpochProgress:
    """Epoch, loss, validation accuracy and time left. A resumed run starts at 0 of `epochs`
    until its first epoch ends; that epoch's number tells where the run resumed, and the bar
    jumps there without counting the resumed epochs as speed."""

    def __init__(
        self,
        epochs: int,
        then: Callable[[EpochMetrics], bool | None] | None = None,
        console: Console | None = None,
    ):
        self.then = then
        self.progress = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[acc]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
        )
        self.task = self.progress.add_task("train", total=epochs, loss="-", acc="-", note="")
        self._started = False

    def note(self, text: str) -> None:
        """Show `text` after the bar (e.g. that the run stops after this epoch)."""
        self.progress.update(self.task, note=text)

    def __enter__(self) -> EpochProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_epoch_end(self, m: EpochMetrics) -> bool | None:
        if not self._started:  # the epochs before this one were done by an earlier run (or none)
            self.progress.reset(self.task, completed=m.epoch - 1)
            self._started = True
        acc = "-" if m.val_acc is None else f"{m.val_acc:.2%}"
        self.progress.update(self.task, advance=1, loss=f"{m.train_loss:.3f}", acc=acc)
        return self.then(m) if self.then is not None else None
