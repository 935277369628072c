"""The peers' own schedulers (benchmarks/sim_peers.py) in the curve simulator: each runs a short
search on a tiny synthetic table and picks a config of the space; the libraries' decisions reach
the simulator as they mean them. A peer whose library is not installed (the `bench` extra) is
skipped."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sim_peers  # noqa: E402, F401  (registers the peers into simulate.METHODS)
import simulate  # noqa: E402

LIBRARY = {"st-asha": "syne_tune", "st-bohb": "syne_tune", "neps-priorband": "neps"}
EPOCHS = 9  # Syne Tune's ASHA stops at rungs 1 and 3 (grace 1, factor 3); PriorBand's rungs: 1, 3, 9
SPACE = {
    "optim.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "lr_adamw": {
        "type": "float",
        "path": "optim.lr",
        "low": 1e-4,
        "high": 1e-2,
        "log": True,
        "when": {"optim.name": ["adamw"]},
    },
    "lr_sgd": {
        "type": "float",
        "path": "optim.lr",
        "low": 1e-2,
        "high": 1.0,
        "log": True,
        "when": {"optim.name": ["sgd"]},
    },
    "augment.mix_epochs": {"type": "int", "low": 0, "high": 8, "step": 2},
    "model.se": {"type": "categorical", "choices": [True, False]},
}
RECIPE = {"optim.name": "adamw", "lr_adamw": 1e-3, "augment.mix_epochs": 4, "model.se": True}


def synthetic_table(configs: int = 16) -> simulate.Table:
    """Rising curves whose height falls with the lr's distance (in decades) to the best lr of its
    optimizer; the recipe is config 0."""
    rng = random.Random(0)
    rows = []
    for c in range(configs):
        name = "adamw" if c == 0 else rng.choice(["adamw", "sgd"])
        lo, hi, best = (1e-4, 1e-2, 1e-3) if name == "adamw" else (1e-2, 1.0, 0.1)
        params = dict(RECIPE) if c == 0 else {"optim.name": name}
        if c:
            params[f"lr_{name}"] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            params |= {"augment.mix_epochs": rng.choice([0, 2, 4, 6, 8]), "model.se": rng.choice([True, False])}
        height = 0.9 - 0.3 * abs(math.log10(params[f"lr_{name}"] / best))
        for seed in range(2):
            val = [round(height * (1 - 0.8 * math.exp(-e / 2)) + 0.01 * seed, 4) for e in range(1, EPOCHS + 1)]
            rows.append(
                {
                    "config": c,
                    "seed": seed,
                    "params": params,
                    "status": "completed",
                    "val": val,
                    "seconds": [1.0] * EPOCHS,
                    "test": height,
                }
            )
    header = {
        "format": simulate.FORMAT,
        "epochs": EPOCHS,
        "seeds": 2,
        "search_space": SPACE,
        "fixed": {"optim": {"epochs": EPOCHS}, "eval": {"patience": EPOCHS}},
    }
    return simulate.Table(header, rows, "<synthetic>")


def peer(name: str, table: simulate.Table, repeat: int = 0):
    pytest.importorskip(LIBRARY[name])
    return simulate.METHODS[name](table, repeat)


class Recorder:
    """Passes a searcher's calls through and keeps its proposals and decisions."""

    def __init__(self, searcher):
        self.searcher = searcher
        self.proposals: list[simulate.Proposal] = []
        self.decisions: list[tuple[int, int, simulate.Decision]] = []  # (trial, epoch, decision)

    def ask(self):
        p = self.searcher.ask()
        if p is not None:
            self.proposals.append(p)
        return p

    def report(self, trial_id, epoch, val_acc):
        d = self.searcher.report(trial_id, epoch, val_acc)
        self.decisions.append((trial_id, epoch, d))
        return d

    def finished(self, trial_id, completed):
        self.searcher.finished(trial_id, completed)

    def choice(self):
        return self.searcher.choice()


def check_in_space(params: dict) -> None:
    """Exactly the active parameters of SPACE, each a plain value inside its range."""
    json.dumps(params)  # plain Python values, no numpy scalars
    branch = params["optim.name"]
    assert set(params) == {"optim.name", f"lr_{branch}", "augment.mix_epochs", "model.se"}
    lr = SPACE[f"lr_{branch}"]
    assert lr["low"] <= params[f"lr_{branch}"] <= lr["high"]
    assert params["augment.mix_epochs"] in (0, 2, 4, 6, 8)
    assert params["model.se"] in (True, False)


@pytest.mark.parametrize("name", list(LIBRARY))
def test_peer_runs_a_search_and_picks_a_config_of_the_space(name):
    table = synthetic_table()
    searcher = Recorder(peer(name, table))
    out = simulate.simulate(table, searcher, name, 0, workers=2, budget=5 * EPOCHS)
    assert out.epochs >= 5 * EPOCHS and out.trials > 2
    for p in searcher.proposals:
        check_in_space(p.params)
    pick = searcher.choice()
    check_in_space(pick)
    assert out.test == table.test[table.nearest(pick)]


@pytest.mark.parametrize("name", list(LIBRARY))
def test_peer_search_is_the_same_for_the_same_repeat(name):
    """A repeat's search does not depend on what ran before it in the process (the libraries draw
    from NumPy's and torch's global generators), so repeats are paired across runs and processes."""
    import numpy as np

    table = synthetic_table()
    runs = []
    for disturb in (1, 2):
        np.random.seed(disturb)  # another method's search before this one
        searcher = Recorder(peer(name, table, repeat=3))
        simulate.simulate(table, searcher, name, 3, workers=2, budget=6 * EPOCHS)
        runs.append(([p.params for p in searcher.proposals], searcher.decisions))
    assert runs[0] == runs[1]


def test_syne_tune_asha_stops_at_its_rungs_and_its_last_stop_completes_the_trial():
    table = synthetic_table()
    searcher = Recorder(peer("st-asha", table))
    out = simulate.simulate(table, searcher, "st-asha", 0, workers=2, budget=6 * EPOCHS)
    stops = [e for _, e, d in searcher.decisions if d is simulate.Decision.STOP]
    assert stops and set(stops) <= {1, 3}
    assert out.stopped == len(stops)  # ASHA's STOP at max_t (the 9th epoch) is a completed trial
    assert any(e == EPOCHS for _, e, _ in searcher.decisions)


def test_priorband_pauses_at_its_rungs_and_resumes_the_promoted_trials():
    table = synthetic_table()
    searcher = Recorder(peer("neps-priorband", table))
    simulate.simulate(table, searcher, "neps-priorband", 0, workers=2, budget=8 * EPOCHS)
    pauses = {(t, e) for t, e, d in searcher.decisions if d is simulate.Decision.PAUSE}
    assert pauses and {e for _, e in pauses} <= {1, 3}
    resumed = [p.trial_id for p in searcher.proposals if p.resume]
    assert resumed and all(any(t == r for t, _ in pauses) for r in resumed)
    new = [p.trial_id for p in searcher.proposals if not p.resume]
    assert len(new) == len(set(new))


def test_priorband_draws_around_the_recipe():
    """Before any result, PriorBand samples from its prior (the recipe) or uniformly: both of the
    recipe's two categorical values come up together far more often than the 1 in 4 of uniform
    draws (12.5 of 50, standard deviation 3)."""
    searcher = peer("neps-priorband", synthetic_table())
    draws = [searcher.ask().params for _ in range(50)]
    both = sum(p["optim.name"] == "adamw" and p["model.se"] is True for p in draws)
    assert both >= 18
