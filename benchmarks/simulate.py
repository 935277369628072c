"""Replay a table of real learning curves (benchmarks/build_curve_table.py) to compare search methods.

The instrument of issue 21: a search method runs on W asynchronous workers over a table of real
curves with a simulated clock, so each method gets 50+ repeats in minutes where real training
gives 5 in hours.
- A proposed config trains as its nearest table config (Table.nearest: numeric parameters scaled
  to their range, log where the space is log; a categorical that differs counts as a numeric
  parameter's whole range; conditional parameters only where active), replaying one of that config's training seeds, drawn per trial and the same
  for every method of a repeat (draw_seed), so the differences between methods are paired.
- Each epoch takes its recorded seconds. The recipe's early-stopping patience (the table's
  `eval.patience`) ends a trial as the trainer would (the table holds full curves).
- Trials start until the epochs run reach the budget (10 x the table's epochs by default: the real
  benchmark's); the running ones then finish, as in bench_search_quality.py.
- A search is scored by the mean TEST accuracy, over the table's seeds, of the config it picks:
  no searcher ever reads a test score.
Methods implement Searcher and register in METHODS: bench_search_quality.py's methods through the
project's own Optuna code (OptunaSearcher), and the peers of benchmarks/sim_peers.py.

  python benchmarks/simulate.py --table benchmarks/tables/fashion-n200-e12.jsonl --plot P.png --out R.md
  python benchmarks/simulate.py --table T --workers 8 --methods stl-tune,random+asha --repeats 100
  python benchmarks/simulate.py --table T --methods stl-tune --study my-search.yaml   # a study file of yours
  python benchmarks/simulate.py --quick      # the tiny committed table: seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import heapq
import itertools
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from stl_tune.errors import StudyError
from stl_tune.search import record
from stl_tune.search.spec import warmstart
from stl_tune.search.spec.space import ParamSpec, StudySpec, curve_value, suggest_config
from stl_tune.search.state.export import pick_trial
from stl_tune.search.state.study import create_or_load_study, load_study

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_search_quality as bsq  # noqa: E402

ROOT = bsq.ROOT
QUICK_TABLE = HERE / "tables" / "quick.jsonl"
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
    # a re-evaluation: train the config with a seed (so a validation split) that none of this
    # search's trials of it has replayed, while the table has one
    new_seed: bool = False


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
        self.all_seconds = [x for runs_of_c in self.seconds for run in runs_of_c for x in run]
        self.status: list[list[str]] = [[r["status"] for r in rs] for rs in runs]  # completed | diverged
        self.test: list[float] = [_mean_test(rs) for rs in runs]
        self._index = _Index(self.spec.params, self.params)

    @classmethod
    def load(cls, path: str | Path, configs: int | None = None) -> Table:
        """The table in `path`; with `configs`, its first configs only (numbers 0..configs-1), so a
        measurement on a table still being built can be repeated on the finished one."""
        try:
            lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        except OSError as e:
            raise SystemExit(f"{path}: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SystemExit(f"{path}: not a curve table (JSON lines of build_curve_table.py)") from None
        if not lines:
            raise SystemExit(f"{path}: empty")
        if not all(isinstance(line, dict) for line in lines):
            raise SystemExit(f"{path}: not a curve table (JSON lines of build_curve_table.py)")
        rows = [r for r in lines[1:] if configs is None or r["config"] < configs]
        return cls(lines[0], rows, str(path))

    def __len__(self) -> int:
        return len(self.params)

    @property
    def space(self) -> list[ParamSpec]:
        """The search space, as the project's study files declare it (search/spec/space.py)."""
        return self.spec.params

    def nearest(self, params: dict[str, Any]) -> int:
        """The config nearest to `params` (see _Index)."""
        return self._index.nearest(params)

    def distance2(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        """The squared distance between two configs' params, as `nearest` measures it (see _Index)."""
        return self._index.distance2(self._index.coords(a), self._index.coords(b))


def _default_patience(epochs: int) -> int:
    """TrainConfig's patience, scaled to `epochs` as bench_search_quality.scaled_study scales it."""
    from stl_tune.config import TrainConfig

    return max(1, round(TrainConfig().eval.patience * epochs / bsq.SEED_EPOCHS))


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

    def distance2(self, q: dict[str, Any], x: dict[str, Any]) -> float:
        """The squared distance of two configs' coords."""
        d = 0.0
        for name in q.keys() | x.keys():
            if name not in q or name not in x:
                d += 1.0
            elif name in self.categorical:
                d += q[name] != x[name]
            else:
                d += (q[name] - x[name]) ** 2
        return d

    def nearest(self, params: dict[str, Any]) -> int:
        q = self.coords(params)
        return min(range(len(self.points)), key=lambda i: self.distance2(q, self.points[i]))


# -------------------------------------------------------------------------------- the simulator
@dataclass
class Search:
    """One method's search in one repeat."""

    method: str
    repeat: int
    choice: int | None = None  # the table config of the final pick
    test: float | None = None  # its mean test accuracy over the table's seeds: the search's score
    trials: int = 0  # started (a resumed trial counts once)
    stopped: int = 0  # ended by the searcher (pruned)
    epochs: int = 0  # run by all trials
    clock_s: float = 0.0  # the simulated clock at the end
    # (epochs spent, mean test accuracy of the current pick) after each trial that ended
    trajectory: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class _Run:
    """A trial on the simulated workers: one seed of one table config."""

    config: int
    val: list[float]
    seconds: list[float]
    diverges: bool  # the run diverged after its recorded epochs
    epoch: int = 0  # epochs done
    best: float = -math.inf
    best_epoch: int = 0


def draw_seed(repeat: int, config: int, occurrence: int, seeds: int) -> int:
    """The table seed a trial of `config` replays: the same in every method of a repeat (the
    occurrence-th trial of that config in the search), so the methods' differences are paired."""
    return random.Random(f"{repeat}/{config}/{occurrence}").randrange(seeds)


def simulate(table: Table, searcher: Searcher, method: str, repeat: int, workers: int, budget: int) -> Search:
    """Run `searcher` on `workers` asynchronous workers over the table: each epoch takes its recorded
    seconds on the simulated clock; trials start until the epochs run reach `budget`, then the
    running ones finish (as bench_search_quality.py's deadline does). The recipe's patience ends a
    trial whose validation accuracy has not improved for table.patience epochs (the trainer's rule)."""
    out = Search(method, repeat)
    runs: dict[int, _Run] = {}
    occurrences: dict[int, int] = {}
    replayed: dict[int, set[int]] = {}  # config -> the seeds its trials replayed
    events: list[tuple[float, int, int]] = []  # (clock at the end of a trial's next epoch, order, trial)
    order = itertools.count()
    clock, busy = 0.0, 0
    pick_cache: dict[str, int] = {}

    def schedule(tid: int) -> None:
        run = runs[tid]
        # the diverging epoch, unrecorded, costs the run's mean epoch (the table's, if it diverged at once)
        cost = (
            run.seconds[run.epoch]
            if run.epoch < len(run.seconds)
            else statistics.fmean(run.seconds or table.all_seconds)
        )
        heapq.heappush(events, (clock + cost, next(order), tid))

    def start_trials() -> None:
        nonlocal busy
        while busy < workers and out.epochs < budget:
            p = searcher.ask()
            if p is None:
                return
            if p.resume:
                if p.trial_id not in runs:
                    raise ValueError(f"{method}: resume of unknown trial {p.trial_id}")
            else:
                if p.trial_id in runs:
                    raise ValueError(f"{method}: trial {p.trial_id} started twice")
                c = table.nearest(p.params)
                k = occurrences[c] = occurrences.get(c, -1) + 1
                s = draw_seed(repeat, c, k, len(table.curves[c]))
                if p.new_seed:
                    fresh = [x for x in range(len(table.curves[c])) if x not in replayed.get(c, ())]
                    s = fresh[draw_seed(repeat, c, k, len(fresh))] if fresh else s
                replayed.setdefault(c, set()).add(s)
                runs[p.trial_id] = _Run(c, table.curves[c][s], table.seconds[c][s], table.status[c][s] == "diverged")
                out.trials += 1
            busy += 1
            schedule(p.trial_id)

    def ended(tid: int, completed: bool) -> None:
        nonlocal busy
        busy -= 1
        searcher.finished(tid, completed)
        pick = searcher.choice()
        if pick is not None:
            key = json.dumps(pick, sort_keys=True)
            c = pick_cache[key] = pick_cache[key] if key in pick_cache else table.nearest(pick)
            out.trajectory.append((out.epochs, table.test[c]))

    start_trials()
    while events:
        clock, _, tid = heapq.heappop(events)
        run = runs[tid]
        if run.epoch == len(run.val):  # the diverging epoch: no validation, the trial fails
            ended(tid, False)
            start_trials()
            continue
        acc = run.val[run.epoch]
        run.epoch += 1
        out.epochs += 1
        if acc > run.best:
            run.best, run.best_epoch = acc, run.epoch
        decision = searcher.report(tid, run.epoch, acc)
        if decision is Decision.STOP:
            out.stopped += 1
            ended(tid, False)
        elif decision is Decision.PAUSE:
            busy -= 1
        elif run.epoch == len(run.val) and not run.diverges:  # the last epoch
            ended(tid, True)
        elif table.patience > 0 and run.epoch - run.best_epoch >= table.patience:  # train.py's patience_spent
            ended(tid, True)
        else:
            schedule(tid)
        start_trials()
    out.clock_s = clock
    pick = searcher.choice()
    if pick is not None:
        out.choice = table.nearest(pick)
        out.test = table.test[out.choice]
    return out


# ------------------------------------------------------------------------- the Optuna methods
class OptunaSearcher:
    """A bench_search_quality.py method (its METHODS: sampler, pruner, objective, warm start) on
    the table's scale, through the project's own code: the study built as `stl-tune run` builds
    it (search/state/study.py, plugins.py), the known recipe queued as trial 0 (search/spec/warmstart.py) and
    never pruned, one sampler per busy worker (worker k samples with seed + k, as `stl-tune worker`
    does) on one in-memory storage, each epoch reported with trial.report / should_prune as
    search/worker/objective.py does, the value from space.curve_value as the objective computes it, the
    final pick as `stl-tune export` picks (search/state/export.py's pick_trial)."""

    def __init__(self, table: Table, key: str, repeat: int):
        method = bsq.METHODS[key]()
        base = {"search_space": table.header["search_space"], "fixed": table.header.get("fixed") or {}}
        self.name = f"{key}-seed{100 * repeat}"  # sampler seeds 100 r + k for worker k: no overlap up to 100 workers
        self.spec = StudySpec.from_dict(bsq.study_dict(self.name, base, method, 100 * repeat), source=self.name)
        self.storage = optuna.storages.InMemoryStorage()
        self.workers = [create_or_load_study(self.spec, self.name, self.storage)]
        if method.warm_start:
            warmstart.enqueue(self.workers[0], self.spec, bsq.scaled_recipe(base), "the known recipe, scaled")
        self.epochs = table.epochs
        self.running: dict[int, tuple[optuna.Trial, int, list[float]]] = {}  # trial -> (trial, worker, curve)
        self.pruned: set[int] = set()

    def ask(self) -> Proposal:
        busy = {w for _, w, _ in self.running.values()}
        w = min(set(range(len(self.workers) + 1)) - busy)
        if w == len(self.workers):
            self.workers.append(load_study(self.name, self.storage, worker=w)[0])
        trial = self.workers[w].ask()
        suggest_config(trial, self.spec)  # the space's conditions decide which params the trial gets
        self.running[trial.number] = (trial, w, [])
        return Proposal(trial.number, dict(trial.params))

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        trial, _, curve = self.running[trial_id]
        curve.append(val_acc)
        trial.report(val_acc, epoch)
        if epoch >= self.epochs:  # objective.py: the run is over, keep its value
            return Decision.CONTINUE
        if not record.queued(trial) and trial.should_prune():
            self.pruned.add(trial_id)
            return Decision.STOP
        return Decision.CONTINUE

    def finished(self, trial_id: int, completed: bool) -> None:
        trial, w, curve = self.running.pop(trial_id)
        study = self.workers[w]
        if completed:
            study.tell(trial, curve_value(curve, self.spec.objective))
        else:  # pruned, or diverged (objective.py returns NaN there: Optuna records FAIL)
            study.tell(trial, state=TrialState.PRUNED if trial_id in self.pruned else TrialState.FAIL)

    def choice(self) -> dict[str, Any] | None:
        try:
            return dict(pick_trial(self.workers[0]).params)
        except StudyError:  # no complete trial yet
            return None


# (table, repeat) -> a fresh searcher; the peers (benchmarks/sim_peers.py) register into it.
METHODS: dict[str, Callable[[Table, int], Searcher]] = {
    key: (lambda table, repeat, key=key: OptunaSearcher(table, key, repeat)) for key in bsq.METHODS
}
DEFAULT = "stl-tune"
CANDIDATES = ("tpe+asha", "rung50")  # bench_search_quality.py's candidates: simulated on request only


def register_study(path: Path) -> str:
    """Register a study file's search as a method named by the file's stem; its name."""
    name = path.stem
    if name in METHODS:
        raise SystemExit(f"--study {path}: a method is called {name!r} already; rename the file")
    try:
        method = bsq.study_method(path)  # read once, now: a bad file is one line before any search
    except StudyError as e:
        raise SystemExit(f"--study: {e}") from None
    bsq.METHODS[name] = lambda: method  # the pool forks: its processes see both
    METHODS[name] = lambda table, repeat: OptunaSearcher(table, name, repeat)
    return name


# ------------------------------------------------------------------------------------- repeats
_TABLE: Table | None = None  # each pool process's table


def _load(table: Table) -> None:
    global _TABLE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _TABLE = table


def _repeat(methods: list[str], repeat: int, workers: int, budget: int) -> list[Search]:
    """Every method once, with this repeat's seed draws."""
    assert _TABLE is not None
    return [simulate(_TABLE, METHODS[m](_TABLE, repeat), m, repeat, workers, budget) for m in methods]


def run_all(table: Table, methods: list[str], repeats: int, workers: int, budget: int, jobs: int) -> list[Search]:
    """All methods x repeats, the repeats spread over `jobs` processes, with a progress bar. The
    processes get the table as loaded here: a table still being built may grow meanwhile."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    searches: list[Search] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    ctx = multiprocessing.get_context("fork")  # the peers registered into METHODS stay registered
    with (
        Progress(*columns, transient=True) as bar,
        ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_load, initargs=(table,)) as pool,
    ):
        task = bar.add_task(f"{len(methods)} methods x {repeats} repeats, W={workers}", total=repeats)
        for fut in as_completed([pool.submit(_repeat, methods, r, workers, budget) for r in range(repeats)]):
            searches += fut.result()
            bar.advance(task)
    return sorted(searches, key=lambda s: (methods.index(s.method), s.repeat))


# --------------------------------------------------------------------------------------- report
@dataclass
class Row:
    method: str
    n: int
    mean: float  # points
    se: float
    diff: float | None = None  # paired, against the default, points
    diff_se: float | None = None
    ci: tuple[float, float] | None = None  # 95 %: diff ± Z95 se
    trials: float = 0.0
    stopped: float = 0.0
    epochs: float = 0.0
    minutes: float = 0.0  # the simulated clock


# The normal 95 % quantile: repeats are 50 or more, where Student's t (2.01 at 49 degrees of
# freedom) is 2.5 % wider; scipy, which has t, is no dependency of the project's tests.
Z95 = statistics.NormalDist().inv_cdf(0.975)


def summarize(searches: list[Search], default: str = DEFAULT) -> list[Row]:
    """Per method: mean ± standard error over repeats of the pick's mean test accuracy, and the
    paired difference to `default` (same repeat: same seed draws) with its 95 % interval. A search
    that picked nothing (no complete trial) scores 0."""
    by: dict[str, dict[int, Search]] = {}
    for s in searches:
        by.setdefault(s.method, {})[s.repeat] = s
    rows = []
    for method, reps in by.items():
        acc = [100 * (s.test or 0.0) for s in reps.values()]
        n = len(acc)
        row = Row(method, n, statistics.fmean(acc), _se(acc))
        for name in ("trials", "stopped", "epochs"):
            setattr(row, name, statistics.fmean(getattr(s, name) for s in reps.values()))
        row.minutes = statistics.fmean(s.clock_s for s in reps.values()) / 60
        base = by.get(default, {})
        common = sorted(reps.keys() & base.keys())
        if method != default and len(common) >= 2:
            d = [100 * ((reps[r].test or 0.0) - (base[r].test or 0.0)) for r in common]
            row.diff, row.diff_se = statistics.fmean(d), _se(d)
            half = Z95 * row.diff_se
            row.ci = (row.diff - half, row.diff + half)
        rows.append(row)
    return rows


def _se(xs: list[float]) -> float:
    return statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) >= 2 else math.nan


def markdown(rows: list[Row], default: str = DEFAULT) -> str:
    lines = [
        f"| method | test acc % (mean ± se) | vs {default} (points, paired, ± se) | 95 % interval "
        "| trials (stopped) | epochs | simulated min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "-" if r.diff is None else f"{r.diff:+.2f} ± {r.diff_se:.2f}"
        ci = "-" if r.ci is None else f"[{r.ci[0]:+.2f}, {r.ci[1]:+.2f}]"
        lines.append(
            f"| {r.method} | {r.mean:.2f} ± {r.se:.2f} | {diff} | {ci} | {r.trials:.1f} ({r.stopped:.1f}) "
            f"| {r.epochs:.1f} | {r.minutes:.1f} |"
        )
    return "\n".join(lines)


def _at(trajectory: list[tuple[int, float]], x: int) -> float | None:
    """The pick's test accuracy once `x` epochs were spent (the last point at or before x)."""
    value = None
    for spent, test in trajectory:
        if spent > x:
            break
        value = test
    return value


def plot(searches: list[Search], budget: int, path: Path, title: str) -> None:
    """Mean test accuracy of the current pick against epochs spent, one line per method (a point
    once every repeat has a pick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[Search]] = {}
    for s in searches:
        by.setdefault(s.method, []).append(s)
    top = max(s.epochs for s in searches)
    grid = list(range(0, top + 1, max(1, top // 200)))
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, ss in by.items():
        ys = []
        for x in grid:
            found = [v for s in ss if (v := _at(s.trajectory, x)) is not None]
            ys.append(100 * statistics.fmean(found) if len(found) == len(ss) else math.nan)
        ax.plot(grid, ys, label=f"{method} ({len(ss)} repeats)")
    ax.axvline(budget, color="grey", linestyle=":", label=f"budget ({budget} epochs)")
    ax.set(
        xlabel="epochs spent (by all trials, as each trial ends)", ylabel="test accuracy of the current pick, % (mean)"
    )
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def _register_peers() -> None:
    """Import benchmarks/sim_peers.py when it is there: it registers the peers into METHODS. Run
    as a script, this module is __main__: the peers' `import simulate` must find this one."""
    sys.modules.setdefault("simulate", sys.modules[__name__])
    if (HERE / "sim_peers.py").is_file():
        import sim_peers  # noqa: F401


def positive_int(text: str) -> int:
    """argparse's type for a count: 0 or less is an error, not the default."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be 1 or more")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=Path, help=f"a curve table [quick: {QUICK_TABLE.relative_to(ROOT)}]")
    ap.add_argument("--configs", type=positive_int, help="the table's first N configs only [all that have every seed]")
    ap.add_argument("--quick", action="store_true", help="the tiny committed table, 3 repeats: checks it works")
    ap.add_argument(
        "--methods",
        help=f"comma list of {', '.join(METHODS)} and sim_peers.py's peers "
        f"[all but the candidates {', '.join(CANDIDATES)}]",
    )
    ap.add_argument(
        "--study",
        type=Path,
        action="append",
        default=[],
        help="a study file whose search (sampler, pruner, objective; the known recipe first) runs as "
        "one more method, named by the file's stem; the space is the table's (repeatable)",
    )
    ap.add_argument("--workers", type=positive_int, default=2, help="asynchronous workers per search [2]")
    ap.add_argument("--repeats", type=positive_int, help="repeats per method [50; quick: 3]")
    ap.add_argument("--budget", type=positive_int, help="training epochs per search [10 x the table's epochs]")
    ap.add_argument("--jobs", type=positive_int, default=os.cpu_count(), help="processes, over repeats [all cores]")
    ap.add_argument("--plot", type=Path, help="write the plot to this PNG")
    ap.add_argument("--out", type=Path, help="write the table: .md (markdown) or .json (every search)")
    args = ap.parse_args()
    if not args.methods or any(m not in METHODS for m in args.methods.split(",")):
        _register_peers()  # their libraries take seconds to import: only when asked for
    path = args.table or (QUICK_TABLE if args.quick else None)
    if path is None:
        raise SystemExit("--table FILE (or --quick)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table = Table.load(path, args.configs)
    methods = args.methods.split(",") if args.methods else [m for m in METHODS if m not in CANDIDATES]
    methods += [register_study(p) for p in args.study]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; registered: {', '.join(METHODS)}")
    repeats = args.repeats or (3 if args.quick else 50)
    budget = args.budget or 10 * table.epochs
    runs = sum(len(c) for c in table.curves)
    print(
        f"{path}: {len(table)} configs ({runs} runs) of {table.epochs} epochs, patience {table.patience}; "
        f"{len(methods)} methods x {repeats} repeats, {args.workers} workers, {budget} epochs per search",
        flush=True,
    )
    t0 = time.perf_counter()
    jobs = min(args.jobs, repeats)
    searches = run_all(table, methods, repeats, args.workers, budget, jobs)
    wall = time.perf_counter() - t0
    rows = summarize(searches)
    text = markdown(rows)
    print(text)
    print(f"simulation wall time {wall:.1f} s ({jobs} processes)")
    if args.out:
        if args.out.suffix == ".json":
            payload = {
                "table": str(path),
                "configs": len(table),
                "runs": runs,
                "workers": args.workers,
                "budget": budget,
                "wall_s": round(wall, 1),
                "rows": [dataclasses.asdict(r) for r in rows],
                "searches": [dataclasses.asdict(s) for s in searches],
            }
            args.out.write_text(json.dumps(payload, indent=1))
        else:
            args.out.write_text(text + "\n")
    if args.plot:
        title = f"{Path(path).name}: {len(table)} configs, {repeats} repeats, W={args.workers}, {budget} epochs"
        plot(searches, budget, args.plot, title)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
