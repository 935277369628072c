"""Ctrl-C and SIGTERM, taken the same way by every command that trains or runs workers: the first
asks for a stop at the next safe point, a second stops at once.

`stl-tune train` stops its run at the end of the epoch under way, checkpointed there (cli/train.py);
a search worker its trial, likewise, which is queued to resume there (search/worker/workers.py);
the process that launched workers forwards the first signal to them and kills them on the second
(search/worker/launch.py). A leaf: it imports nothing of stl-tune.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """While inside (`with stop:`), SIGINT and SIGTERM are this object's: counted (`count`), never
    raised except inside `interruptible()`, so that no signal lands in the middle of a write that
    must be whole (Optuna's ask and tell, a storage call): one outside is remembered, and the next
    interruptible() raises at once. Inside interruptible(soft=True) (a training) the first signal
    only sets `requested`, which the training reads at its epoch's end; a second raises
    KeyboardInterrupt. on_request() runs on the first signal (a line saying what happens next).
    Signals reach the main thread only: elsewhere `with stop:` installs nothing."""

    def __init__(self, on_request: Callable[[], None] = lambda: None) -> None:
        self.count = 0  # signals received while inside
        self.on_request = on_request
        self.armed = False
        self.soft = False
        self._raised = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def __call__(self) -> bool:
        """Whether a stop was asked for (a training's checkpoint_now and stop_requested)."""
        return self.requested

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._raised:
            return  # a stop is being acted on
        self.count += 1
        if self.count == 1:
            self.on_request()
        if self.armed and not (self.count == 1 and self.soft):
            self._raised = True
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self, soft: bool = False) -> Iterator[None]:
        """Inside, a signal raises KeyboardInterrupt (with soft, the second one); one received
        before raises here at once."""
        if self.requested:
            raise KeyboardInterrupt
        self.armed, self.soft = True, soft
        try:
            yield
        finally:
            self.armed = self.soft = False
