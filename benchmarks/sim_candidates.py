"""Candidates for stl-tune's default search (issue 22), registered into the curve simulator.

Each candidate is the default search as issue 22 found it (`tpe-sh3`: the known recipe as trial 0,
TPE, successive halving at 30 and 90 of 200 epochs, the last-5 objective) with one thing changed,
run through simulate.py's OptunaSearcher, i.e. through the project's own study, plug-in and
export code; the prior sampler is stl_tune/search/spec/prior.py. Two candidates change what the
searcher does around Optuna: `smooth3` (the pruner sees the mean of the last 3 epochs) and
`reeval3` (the top 3 are re-trained once with another seed inside the budget, the pick by mean);
one changes the final pick: `prior-modelpick` (the complete trial whose value, smoothed over its
neighbours in the space, is best, instead of the best value).

  python benchmarks/sim_candidates.py --table T --methods stl-tune,prior,random+asha --repeats 50 --out R.json
  python benchmarks/sim_candidates.py --versus R.json     # every method against every other, paired
Every other option is simulate.py's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from stl_tune.search.spec.space import curve_value
from stl_tune.search.state.trials import ranked

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_search_quality as bsq  # noqa: E402
import simulate  # noqa: E402
from simulate import Decision, OptunaSearcher, Proposal, Search, Table  # noqa: E402

# seed.yaml's sampler and pruner when issue 22 began (bench_search_quality.py's "stl-tune" then):
# the candidates change these, so they mean the same whatever seed.yaml holds now.
TPE_2026_12 = {"name": "tpe", "seed": 0, "n_startup_trials": 5}
SH_2026_12 = {"name": "successive_halving", "min_resource": 30, "reduction_factor": 3}


def _variant(label: str, sampler: dict | None = None, pruner: dict | None = None, **changes: Any):
    """A factory of the stl-tune method (the known recipe as trial 0, the last-5 objective) with
    TPE_2026_12 / SH_2026_12's options changed: merged into them, or in their place when they name
    another plug-in."""

    def make() -> bsq.Method:
        return dataclasses.replace(
            bsq.METHODS["stl-tune"](),
            label=f"candidate: {label}",
            sampler=dict(sampler) if sampler and "name" in sampler else {**TPE_2026_12, **(sampler or {})},
            pruner=dict(pruner) if pruner and "name" in pruner else {**SH_2026_12, **(pruner or {})},
            **{"objective": "last5_val_acc", **changes},
        )

    return make


PRIOR = {"name": "prior"}
VARIANTS = {
    "tpe-sh3": _variant("seed.yaml's sampler and pruner when issue 22 began (TPE, successive halving 30/90)"),
    # the prior sampler (search/spec/prior.py) in place of TPE
    "prior": _variant("PriorBand sampler (uniform 1/2, confidence 1/2)", PRIOR),
    "prior-c75": _variant("PriorBand sampler, confidence 0.75", {**PRIOR, "confidence": 0.75}),
    "prior-u25-c75": _variant(
        "PriorBand sampler, uniform 1/4, confidence 0.75", {**PRIOR, "uniform": 0.25, "confidence": 0.75}
    ),
    "prior-u75-c75": _variant(
        "PriorBand sampler, uniform 3/4, confidence 0.75", {**PRIOR, "uniform": 0.75, "confidence": 0.75}
    ),
    "prior-rf4": _variant(
        "PriorBand sampler, successive halving's reduction factor 4", {**PRIOR, "eta": 4}, {"reduction_factor": 4}
    ),
    "prior-u75-rf4": _variant(
        "PriorBand sampler, uniform 3/4, confidence 0.75, reduction factor 4",
        {**PRIOR, "uniform": 0.75, "confidence": 0.75, "eta": 4},
        {"reduction_factor": 4},
    ),
    "prior-c75-rf4": _variant(
        "PriorBand sampler, confidence 0.75, reduction factor 4",
        {**PRIOR, "confidence": 0.75, "eta": 4},
        {"reduction_factor": 4},
    ),
    "random-sh-rf4": _variant("random sampling, reduction factor 4", {"name": "random"}, {"reduction_factor": 4}),
    "random-sh": _variant("random sampling in place of TPE", {"name": "random"}),
    # TPE's start-up
    "tpe-startup10": _variant("TPE with 10 random start-up trials", {"n_startup_trials": 10}),
    "tpe-startup20": _variant("TPE with 20 random start-up trials", {"n_startup_trials": 20}),
    "tpe-startup2": _variant("TPE with 2 random start-up trials", {"n_startup_trials": 2}),
    # rung decisions
    "sh-bootstrap2": _variant("successive halving, bootstrap_count 2", pruner={"bootstrap_count": 2}),
    "sh-rf2": _variant("successive halving, reduction factor 2", pruner={"reduction_factor": 2}),
    "sh-rf4": _variant("successive halving, reduction factor 4", pruner={"reduction_factor": 4}),
    "sh-rung20": _variant("successive halving, first rung at 20 of 200 epochs", pruner={"min_resource": 20}),
    # Syne Tune's ASHA (rungs 1, 3, 9 of 12) led on both finished tables: its rungs with the prior sampler
    "prior-rung20": _variant("PriorBand sampler, first rung at 20 of 200 epochs", PRIOR, {"min_resource": 20}),
    "hyperband-shared": _variant(
        "Hyperband (sampler sees every bracket) from 30 of 200 epochs",
        pruner={"name": "hyperband_shared", "min_resource": 30, "reduction_factor": 3},
    ),
    "no-pruning": _variant("TPE, no pruning", pruner={"name": "none"}),
    # the trial's value, which the sampler learns from and the pick ranks by
    "obj-last": _variant("the last epoch's accuracy as the objective", objective="val_acc"),
    "obj-best": _variant("the best epoch's accuracy as the objective", objective="best_val_acc"),
}


class Smoothed(OptunaSearcher):
    """The pruner sees the mean of the last k epochs' accuracy instead of the last epoch's; the
    trial's value (the objective) still reads the raw curve."""

    def __init__(self, table: Table, key: str, repeat: int, k: int):
        super().__init__(table, key, repeat)
        self.k = k
        self.raw: dict[int, list[float]] = {}

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        raw = self.raw.setdefault(trial_id, [])
        raw.append(val_acc)
        decision = super().report(trial_id, epoch, statistics.fmean(raw[-self.k :]))
        self.running[trial_id][2][-1] = val_acc  # the curve the objective reads stays raw
        return decision


class ReEvaluate(OptunaSearcher):
    """Re-evaluation inside the budget: the search samples until budget - k x the table's epochs
    are spent, then its k best complete trials each train once more with another seed (another
    validation split: Proposal.new_seed), and the pick is the best mean of a candidate's values
    (with `first`, the search's run counts in the mean; without, only the re-run, as `stl-tune
    confirm` ranks). In the product: `stl-tune run` on the smaller budget, then `stl-tune confirm
    --top k --seeds 1`. The budget is simulate.py's default (10 x the table's epochs)."""

    def __init__(self, table: Table, key: str, repeat: int, k: int, first: bool = True):
        super().__init__(table, key, repeat)
        self.k, self.first = k, first
        self.switch = 10 * table.epochs - k * table.epochs
        self.spent = 0
        self.todo: list[tuple[int, dict[str, Any]]] | None = None  # (trial number, params) to train again
        self.again: dict[int, tuple[int, list[float]]] = {}  # proposal id -> (trial number, curve)
        self.values: dict[int, list[float]] = {}  # trial number -> its values over seeds

    def ask(self) -> Proposal | None:
        if self.spent < self.switch:
            return super().ask()
        if self.todo is None:
            best = ranked(self.workers[0].get_trials(deepcopy=False), self.workers[0].direction)[: self.k]
            self.todo = [(t.number, dict(t.params)) for t in best]
            self.values = {t.number: [t.value] if self.first else [] for t in best}
        if not self.todo:
            return None
        number, params = self.todo.pop(0)
        pid = 1_000_000 + len(self.again)
        self.again[pid] = (number, [])
        return Proposal(pid, params, new_seed=True)

    def report(self, trial_id: int, epoch: int, val_acc: float) -> Decision:
        self.spent += 1
        if trial_id in self.again:
            self.again[trial_id][1].append(val_acc)
            return Decision.CONTINUE
        return super().report(trial_id, epoch, val_acc)

    def finished(self, trial_id: int, completed: bool) -> None:
        if trial_id not in self.again:
            super().finished(trial_id, completed)
        elif completed:
            number, curve = self.again[trial_id]
            self.values[number].append(curve_value(curve, self.spec.objective))

    def choice(self) -> dict[str, Any] | None:
        means = {n: statistics.fmean(v) for n, v in self.values.items() if len(v) > int(self.first)}
        if not means:
            return super().choice()
        best = max(means, key=means.get)
        return dict(self.workers[0].trials[best].params)


def register() -> None:
    """Add the candidates to bench_search_quality's METHODS (so OptunaSearcher builds them) and to
    simulate's METHODS, as candidates: simulated on request only."""
    for key, make in VARIANTS.items():
        bsq.METHODS[key] = make
        simulate.METHODS[key] = lambda table, repeat, key=key: OptunaSearcher(table, key, repeat)
    simulate.METHODS["smooth3"] = lambda table, repeat: Smoothed(table, "tpe-sh3", repeat, 3)
    simulate.METHODS["prior-smooth3"] = lambda table, repeat: Smoothed(table, "prior", repeat, 3)
    simulate.METHODS["reeval3"] = lambda table, repeat: ReEvaluate(table, "tpe-sh3", repeat, 3)
    simulate.METHODS["reeval3-new"] = lambda table, repeat: ReEvaluate(table, "tpe-sh3", repeat, 3, first=False)
    simulate.METHODS["reeval2"] = lambda table, repeat: ReEvaluate(table, "tpe-sh3", repeat, 2)
    simulate.METHODS["prior-modelpick"] = lambda table, repeat: ModelPick(table, "prior", repeat)
    simulate.CANDIDATES = (
        *simulate.CANDIDATES,
        *VARIANTS,
        "smooth3",
        "prior-smooth3",
        "reeval3",
        "reeval3-new",
        "reeval2",
        "prior-modelpick",
    )


class ModelPick(OptunaSearcher):
    """The final pick by a model's estimate rather than the single best value (as Ax and mlrMBO
    pick): each complete trial's value is replaced by a Gaussian-kernel average of the complete
    trials' values (Nadaraya-Watson on the simulator's config distance; bandwidth: the median
    distance between complete trials, so nothing is set to a table), and the pick is the trial whose
    average is best. A lucky value among worse neighbours is shrunk towards them."""

    def __init__(self, table: Table, key: str, repeat: int):
        super().__init__(table, key, repeat)
        self.table = table

    def choice(self) -> dict[str, Any] | None:
        done = ranked(self.workers[0].get_trials(deepcopy=False), self.workers[0].direction)
        d2 = [[self.table.distance2(a.params, b.params) for b in done] for a in done]
        h2 = statistics.median([d2[i][j] for i in range(len(done)) for j in range(i + 1, len(done))] or [0.0])
        if h2 == 0:  # fewer than 2 trials, or all at one point: nothing to smooth over
            return super().choice()
        weights = [[math.exp(-d / (2 * h2)) for d in row] for row in d2]
        smoothed = [sum(w * t.value for w, t in zip(row, done)) / sum(row) for row in weights]
        return dict(done[max(range(len(done)), key=smoothed.__getitem__)].params)


# ------------------------------------------------------------------------------------- versus
def versus(path: Path) -> str:
    """From simulate.py's --out JSON: each method's paired difference to each other (points, 95 %
    t interval), as simulate.summarize computes it against the default."""
    payload = json.loads(path.read_text())
    searches = [Search(**{**s, "trajectory": [tuple(p) for p in s["trajectory"]]}) for s in payload["searches"]]
    methods = list(dict.fromkeys(s.method for s in searches))
    lines = [
        f"{payload['table']}: {payload['configs']} configs ({payload['runs']} runs), W={payload['workers']}, "
        f"budget {payload['budget']} epochs",
        "| method | vs | difference (points, paired ± se) | 95 % interval | n |",
        "|---|---|---|---|---|",
    ]
    for base in methods:
        for r in simulate.summarize(searches, default=base):
            if r.diff is not None:
                lines.append(
                    f"| {r.method} | {base} | {r.diff:+.2f} ± {r.diff_se:.2f} | [{r.ci[0]:+.2f}, {r.ci[1]:+.2f}] | {r.n} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--versus":
        print(versus(Path(sys.argv[2])))
    else:
        sys.modules.setdefault("sim_candidates", sys.modules[__name__])
        register()
        simulate.main()
