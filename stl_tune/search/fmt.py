"""How numbers read in stl-tune's output: seconds, durations and counts, the same in the live view,
`stl-tune status`, the report and the workers' lines."""

from __future__ import annotations


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


def plural(n: int, noun: str) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def numbers(trials: list[int]) -> str:
    """'trial 3', 'trials 3, 5'."""
    return f"trial{'' if len(trials) == 1 else 's'} {', '.join(map(str, trials))}"
