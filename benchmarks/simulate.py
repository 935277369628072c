"""Replay a table of real learning curves (benchmarks/build_curve_table.py) to compare search methods.

Skeleton: the interface a search method implements (Searcher, registered in METHODS) and the table
(Table). The simulator itself follows.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from stl_tune.search.space import ParamSpec, StudySpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search_quality import SEED_EPOCHS  # noqa: E402

FORMAT = 1  # build_curve_table.py's line format


# ------------------------------------------------------------------------------ the interface
class Decision(enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"  # the trial ends here (pruned)
    PAUSE = "pause"  # the trial stops now and may be resumed later (promotion-type ASHA)


@dataclass
class Proposal:
    trial_id: int
    params: dict[str, Any]  # in the table's param names; ignored on a resume
    resume: bool = False  # continue trial_id from the epoch it paused at


class Searcher(Protocol):
    def ask(self) -> Proposal | None:
        """A trial to start on a free worker; None: nothing to start now (asked again when a worker
        frees or a trial reports)."""

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        """The trial's raw validation accuracy after `epoch` (1-based)."""

    def finished(self, trial_id: int, completed: bool) -> None:
        """The trial ended: completed (ran to its last epoch, or the patience ended it) or not
        (stopped by the searcher, or diverged)."""

    def choice(self) -> dict[str, Any] | None:
        """The params of the method's final pick (None: none yet)."""


# ------------------------------------------------------------------------------------ the table
class Table:
    """A curve table: per config its params, per seed its validation curve and epoch seconds, and
    the mean test accuracy over its seeds (the score of a search that picks it; nothing a searcher
    reads). Configs are numbered 0..n-1 in the file's order; a partial table (still being built)
    keeps the configs that have all their seeds (any seed, when no config has all)."""

    def __init__(self, header: dict[str, Any], rows: list[dict[str, Any]], path: str = "<table>"):
        if header.get("format") != FORMAT:
            raise SystemExit(f"{path}: table format {header.get('format')!r}, not {FORMAT}")
        self.header, self.path = header, path
        self.epochs: int = header["epochs"]
        fixed = header.get("fixed") or {}
        self.patience: int = fixed.get("eval", {}).get("patience", _default_patience(self.epochs))
        self.spec = StudySpec.from_dict(
            {"name": "table", "search_space": header["search_space"], "fixed": fixed}, source=path
        )
        by_config: dict[int, list[dict]] = {}
        for row in rows:
            by_config.setdefault(row["config"], []).append(row)
        full = [c for c, runs in by_config.items() if len(runs) >= header["seeds"]]
        keep = sorted(full or by_config)
        if not keep:
            raise SystemExit(f"{path}: no runs in the table yet")
        self.ids = keep  # the table's config numbers
        runs = [sorted(by_config[c], key=lambda r: r["seed"]) for c in keep]
        self.params: list[dict[str, Any]] = [r[0]["params"] for r in runs]
        self.curves: list[list[list[float]]] = [[r["val"] for r in rs] for rs in runs]
        self.seconds: list[list[list[float]]] = [[r["seconds"] for r in rs] for rs in runs]
        self.test: list[float] = [_mean_test(rs) for rs in runs]
        self._index = _Index(self.spec.params, self.params)

    @classmethod
    def load(cls, path: str | Path) -> Table:
        lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise SystemExit(f"{path}: empty")
        return cls(lines[0], lines[1:], str(path))

    def __len__(self) -> int:
        return len(self.params)

    @property
    def space(self) -> list[ParamSpec]:
        """The search space, as the project's study files declare it (search/space.py)."""
        return self.spec.params

    def nearest(self, params: dict[str, Any]) -> int:
        """The config nearest to `params` (see _Index)."""
        return self._index.nearest(params)


def _default_patience(epochs: int) -> int:
    """TrainConfig's patience, scaled to `epochs` as bench_search_quality.scaled_study scales it."""
    from stl_tune.config import TrainConfig

    return max(1, round(TrainConfig().eval.patience * epochs / SEED_EPOCHS))


def _mean_test(runs: list[dict]) -> float:
    """Mean test accuracy over the seeds that have one; a config whose every seed diverged
    scores 0 (no search can pick it: a diverged trial never completes)."""
    tests = [r["test"] for r in runs if r.get("test") is not None]
    return sum(tests) / len(tests) if tests else 0.0


class _Index:
    """1-nearest neighbour over the table's configs: each numeric parameter scaled to [0, 1] over
    its range (on a log scale where the space is log), a categorical 0 when equal and 1 otherwise,
    a parameter active in one config only (a conditional one) counts 1; Euclidean distance. A
    mismatch of a categorical costs as much as a numeric parameter's whole range."""

    def __init__(self, space: list[ParamSpec], configs: list[dict[str, Any]]):
        self.space = space
        self.categorical = {p.name for p in space if p.kind == "categorical"}
        self.points = [self.coords(p) for p in configs]

    def coords(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for p in self.space:
            if p.name not in params:
                continue
            v = params[p.name]
            if p.kind == "categorical":
                out[p.name] = v
            elif p.log:
                out[p.name] = (math.log(v) - math.log(p.low)) / (math.log(p.high) - math.log(p.low))
            else:
                out[p.name] = (v - p.low) / (p.high - p.low)
        return out

    def nearest(self, params: dict[str, Any]) -> int:
        q = self.coords(params)
        best, best_d = 0, math.inf
        for i, x in enumerate(self.points):
            d = 0.0
            for name in q.keys() | x.keys():
                if name not in q or name not in x:
                    d += 1.0
                elif name in self.categorical:
                    d += q[name] != x[name]
                else:
                    d += (q[name] - x[name]) ** 2
            if d < best_d:
                best, best_d = i, d
        return best


# ------------------------------------------------------------------------------------ methods
# (table, repeat seed) -> a fresh searcher; peers (benchmarks/sim_peers.py) register into it.
METHODS: dict[str, Callable[[Table, int], Searcher]] = {}
