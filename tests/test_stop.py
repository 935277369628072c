"""Ctrl-C and SIGTERM as `train`, the workers and the launcher take them (stl_tune/stop.py): counted,
raised only inside interruptible(), the first one soft there for a training."""

from __future__ import annotations

import signal

import pytest

from stl_tune.stop import Stop


def test_in_a_training_a_first_signal_asks_and_a_second_stops_at_once():
    asked = []
    stop = Stop(on_request=lambda: asked.append("note"))
    with stop, pytest.raises(KeyboardInterrupt), stop.interruptible(soft=True):
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and stop() and asked == ["note"]  # the epoch goes on
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("the second signal raises")
    assert stop.count == 2 and asked == ["note"]


def test_outside_interruptible_a_signal_is_remembered_and_raised_at_the_next_chance():
    with Stop() as stop:
        signal.raise_signal(signal.SIGINT)  # e.g. during Optuna's tell: nothing is raised there
        assert stop.requested
        with pytest.raises(KeyboardInterrupt), stop.interruptible(soft=True):
            pytest.fail("a stop asked for before: raised on entry")


def test_a_hard_interruptible_raises_on_the_first_signal():
    with Stop() as stop, pytest.raises(KeyboardInterrupt), stop.interruptible():
        signal.raise_signal(signal.SIGINT)
        pytest.fail("not reached")


def test_a_launcher_only_counts_and_the_handlers_are_put_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with Stop() as stop:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
    assert stop.count == 2
    assert {s: signal.getsignal(s) for s in before} == before
