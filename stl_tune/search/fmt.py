"""How numbers read in stl-tune's output: seconds, durations, counts, a trial's parameters and the
best trial, the same in the live view, `stl-tune status`, the report and the workers' lines; and a duration as the
user writes one (--time-budget, a study file's time_budget)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from stl_tune.errors import UserError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


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


def best_line(trial: FrozenTrial | None) -> str:
    """The best trial (trials.ranked's first), as the live view, the run's last line and the report
    say it: 'best 0.8123 (trial 7)', or 'no complete trial yet'."""
    return f"best {trial.value:.4f} (trial {trial.number})" if trial is not None else "no complete trial yet"


def plural(n: int, noun: str) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def numbers(trials: list[int]) -> str:
    """'trial 3', 'trials 3, 5'."""
    return f"trial{'' if len(trials) == 1 else 's'} {', '.join(map(str, trials))}"


def parse_duration(text: str) -> timedelta:
    """'90s', '45m', '6h', '1h30m' -> a timedelta; a UserError for anything else."""
    m = _DURATION.match(text.strip().lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise UserError(f"--time-budget {text!r}: give hours, minutes or seconds, e.g. 90s, 45m, 6h or 1h30m")
    h, mins, s = (int(g or 0) for g in m.groups())
    if h * 3600 + mins * 60 + s == 0:
        raise UserError(f"--time-budget {text!r} must be longer than 0")
    return timedelta(hours=h, minutes=mins, seconds=s)


def short_params(params: Mapping[str, Any]) -> str:
    """'width=64 se=True optim=adamw lr_adamw=0.0012': a parameter by the last part of its name
    (the section for a `name`), numbers to 3 significant digits."""
    parts = []
    for key, value in params.items():
        section, _, field = key.rpartition(".")
        label = section if field == "name" and section else field
        parts.append(f"{label}={value:.3g}" if isinstance(value, float) else f"{label}={value}")
    return " ".join(parts)
