"""The curve-table simulator (benchmarks/simulate.py, issue 21): on a synthetic table whose answer is
known, and its --quick mode on the committed tiny table (the CI check)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_search_quality as bsq  # noqa: E402
import simulate as sim  # noqa: E402
from build_curve_table import draw_configs  # noqa: E402

EPOCHS = 6


def write_table(path: Path, n: int = 30, curves=None, seconds=None) -> sim.Table:
    """A table over seed.yaml's space at 6 epochs, as build_curve_table draws it (the recipe is config
    0), with made-up curves: config c learns to quality q_c, each seed off by a little, and its test
    accuracy is q_c. curves(c, seed) and seconds(c, seed) replace the made-up ones."""
    base = bsq.scaled_study(Path("/nowhere"), 28, EPOCHS)
    spec, configs = draw_configs(base, n)
    header = {
        "format": 1,
        "data": "synthetic",
        "epochs": EPOCHS,
        "seeds": 2,
        "configs": n,
        "search_space": spec.to_dict()["search_space"],
        "fixed": {k: v for k, v in base["fixed"].items() if k != "data"},
    }
    rng = random.Random(0)
    quality = [rng.uniform(0.5, 0.9) for _ in range(n)]
    rows = []
    for c, (params, _) in enumerate(configs):
        for s in range(2):
            val = curves(c, s) if curves else [quality[c] * (1 - 0.5**e) + 0.01 * (s - 0.5) for e in range(1, 7)]
            secs = seconds(c, s) if seconds else [1.0 + c % 3] * len(val)
            diverged = len(val) < EPOCHS  # as the builder writes a run whose loss became NaN
            rows.append(
                {
                    "config": c,
                    "seed": s,
                    "params": params,
                    "status": "diverged" if diverged else "completed",
                    "val": val,
                    "seconds": secs,
                    "test": None if diverged else quality[c],
                }
            )
    path.write_text("\n".join(json.dumps(line) for line in [header, *rows]) + "\n")
    return sim.Table.load(path)


class Scripted:
    """Proposes the table configs of `order` one after the other; picks the completed trial with the
    best last validation accuracy, or config `pick` when given. Logs what the simulator says."""

    def __init__(self, table: sim.Table, order: list[int], pick: int | None = None, decide=None):
        self.table, self.order, self.pick, self.decide = table, list(order), pick, decide
        self.log: list[tuple] = []
        self.config_of: dict[int, int] = {}
        self.last: dict[int, float] = {}
        self.done: list[int] = []

    def ask(self):
        if not self.order:
            return None
        trial_id = len(self.config_of)
        self.config_of[trial_id] = self.order.pop(0)
        return sim.Proposal(trial_id, self.table.params[self.config_of[trial_id]])

    def report(self, trial_id, epoch, val_acc):
        self.log.append(("report", trial_id, epoch, val_acc))
        self.last[trial_id] = val_acc
        return self.decide(trial_id, epoch) if self.decide else sim.Decision.CONTINUE

    def finished(self, trial_id, completed):
        self.log.append(("finished", trial_id, completed))
        if completed:
            self.done.append(trial_id)

    def choice(self):
        if self.pick is not None:
            return self.table.params[self.pick]
        if not self.done:
            return None
        return self.table.params[self.config_of[max(self.done, key=lambda t: self.last[t])]]


def test_the_simulator_tells_an_oracle_from_a_random_search(tmp_path):
    """The oracle proposes the configs best test score first and picks the best; a random search
    proposes random configs and picks by validation. 30 paired repeats tell them apart, and the
    oracle scores exactly the table's best mean test accuracy."""
    table = write_table(tmp_path / "t.jsonl")
    best = max(range(len(table)), key=lambda c: table.test[c])

    def oracle(t, repeat):
        return Scripted(t, sorted(range(len(t)), key=lambda c: -t.test[c]), pick=best)

    def random_search(t, repeat):
        return Scripted(t, random.Random(repeat).sample(range(len(t)), len(t)))

    searches = [
        sim.simulate(table, make(table, r), name, r, workers=2, budget=10 * EPOCHS)
        for r in range(30)
        for name, make in (("oracle", oracle), ("random", random_search))
    ]
    rows = {row.method: row for row in sim.summarize(searches, default="oracle")}
    assert rows["oracle"].mean == pytest.approx(100 * table.test[best]) and rows["oracle"].se == 0
    assert rows["random"].n == 30 and rows["random"].ci[1] < 0  # the 95 % interval lies below the oracle
    # trials start until 10 trials' worth of epochs are spent; the running ones (6 epochs) finish
    assert all(10 * EPOCHS <= s.epochs < 10 * EPOCHS + 2 * EPOCHS for s in searches)


def test_epochs_run_on_a_simulated_clock_and_the_patience_ends_a_trial(tmp_path):
    """Two workers: config 0's epochs take 1 s, config 1's 2.5 s, so config 0 reports its first two
    epochs before config 1's first; config 0's curve stops improving at epoch 2, and the recipe's
    patience (1 epoch at 6 of 200) ends it at epoch 3, completed."""
    table = write_table(
        tmp_path / "t.jsonl",
        n=3,
        curves=lambda c, s: [0.3, 0.5, 0.5, 0.6, 0.7, 0.8] if c == 0 else [0.2 + 0.1 * e for e in range(6)],
        seconds=lambda c, s: [1.0 if c == 0 else 2.5] * 6,
    )
    assert table.patience == 1
    searcher = Scripted(table, [0, 1], pick=1)
    out = sim.simulate(table, searcher, "scripted", 0, workers=2, budget=100)
    reports = [entry[1:3] for entry in searcher.log if entry[0] == "report"]
    assert reports[:4] == [(0, 1), (0, 2), (1, 1), (0, 3)]
    assert ("finished", 0, True) in searcher.log and (0, 4) not in reports
    assert out.epochs == 3 + 6 and out.trials == 2
    assert out.clock_s == pytest.approx(6 * 2.5)  # config 1's six epochs end the search
    assert out.test == table.test[1]
    table.patience = 0  # eval.patience 0: the trainer never stops early, nor does the simulator
    searcher = Scripted(table, [0], pick=0)
    assert sim.simulate(table, searcher, "scripted", 0, workers=1, budget=100).epochs == 6


def test_a_diverged_run_ends_its_trial_uncompleted_after_its_recorded_epochs(tmp_path):
    """Seed 1 of config 0 diverged in its third epoch: a trial replaying it reports two epochs, fails
    (not completed), and the config's score is its other seed's test accuracy."""
    table = write_table(
        tmp_path / "t.jsonl",
        n=2,
        curves=lambda c, s: [0.2, 0.3] if (c, s) == (0, 1) else [0.1 * e for e in range(1, 7)],
    )
    repeat = next(r for r in range(50) if sim.draw_seed(r, 0, 0, 2) == 1)
    searcher = Scripted(table, [0], pick=0)
    out = sim.simulate(table, searcher, "scripted", repeat, workers=1, budget=100)
    assert searcher.log == [("report", 0, 1, 0.2), ("report", 0, 2, 0.3), ("finished", 0, False)]
    assert out.epochs == 2 and out.clock_s == pytest.approx(3 * 1.0)  # the diverging epoch takes time
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()[1:]]
    assert table.status[0] == ["completed", "diverged"] and out.test == table.test[0] == rows[0]["test"]


def test_a_paused_trial_resumes_its_own_seed_and_the_draws_are_paired(tmp_path):
    """A trial paused after epoch 2 and resumed goes on with the curve of the seed it was drawn; the
    seed drawn for a config's k-th trial depends on the repeat only, not on the method."""
    table = write_table(tmp_path / "t.jsonl", n=4, curves=lambda c, s: [s + 0.1 * e for e in range(1, 7)])

    class PauseOnce(Scripted):
        def ask(self):
            if self.log and self.log[-1][:3] == ("report", 0, 2) and not getattr(self, "resumed", False):
                self.resumed = True
                return sim.Proposal(0, {}, resume=True)
            return super().ask() if not self.log else None

    searcher = PauseOnce(
        table, [2], pick=2, decide=lambda t, e: sim.Decision.PAUSE if e == 2 else sim.Decision.CONTINUE
    )
    out = sim.simulate(table, searcher, "pause", 7, workers=1, budget=100)
    values = [v for kind, *rest in searcher.log if kind == "report" for _, _, v in [rest]]
    seed = sim.draw_seed(7, 2, 0, 2)
    assert values == pytest.approx([seed + 0.1 * e for e in range(1, 7)]) and out.trials == 1
    draws = {sim.draw_seed(r, 2, 0, 2) for r in range(20)}
    assert draws == {0, 1}  # both seeds are drawn over the repeats


def test_a_re_evaluation_replays_a_seed_the_search_has_not(tmp_path):
    """Config 1 proposed twice, the second time with new_seed: in every repeat the two trials replay
    the table's two seeds, whichever the first drew."""
    table = write_table(tmp_path / "t.jsonl", n=3, curves=lambda c, s: [s + 0.1 * e for e in range(1, 7)])

    class Twice(Scripted):
        def ask(self):
            p = super().ask()
            return p and sim.Proposal(p.trial_id, p.params, new_seed=p.trial_id == 1)

    for repeat in range(10):
        searcher = Twice(table, [1, 1], pick=1)
        sim.simulate(table, searcher, "twice", repeat, workers=1, budget=100)
        first = {t: v for kind, t, e, v in (x for x in searcher.log if x[0] == "report") if e == 1}
        assert sorted(round(v) for v in first.values()) == [0, 1]


def test_nearest_config_uses_log_scales_and_matches_categoricals(tmp_path):
    table = write_table(tmp_path / "t.jsonl", n=30)
    first = sim.Table.load(tmp_path / "t.jsonl", configs=10)  # --configs: the first 10 only
    assert first.params == table.params[:10] and first.test == table.test[:10]
    for c in (0, 7, 19):
        assert table.nearest(table.params[c]) == c
    sgd = next(c for c in range(len(table)) if table.params[c]["optim.name"] == "sgd")
    assert table.nearest({**table.params[sgd], "lr_sgd": table.params[sgd]["lr_sgd"] * 1.05}) == sgd
    index = sim._Index(table.space, [])
    lr = next(p for p in table.space if p.name == "lr_adamw")
    assert index.coords({"lr_adamw": lr.low})["lr_adamw"] == 0
    assert index.coords({"lr_adamw": (lr.low * lr.high) ** 0.5})["lr_adamw"] == pytest.approx(0.5)  # log scale


def test_stl_tune_runs_the_known_recipe_first_and_never_prunes_it(tmp_path):
    """The default, through the project's own study code: trial 0 is the table's config 0 (the
    recipe), and it runs all its epochs though its curve is the table's lowest, while successive
    halving prunes other trials."""
    table = write_table(tmp_path / "t.jsonl", n=30, curves=lambda c, s: [0.1 * e + 0.01 * c for e in range(1, 7)])
    searcher = sim.METHODS["stl-tune"](table, 0)
    out = sim.simulate(table, searcher, "stl-tune", 0, workers=2, budget=10 * EPOCHS)
    recipe = searcher.workers[0].trials[0]
    assert table.nearest(recipe.params) == 0
    assert recipe.state.name == "COMPLETE" and recipe.last_step == EPOCHS
    completed = [table.nearest(t.params) for t in searcher.workers[0].trials if t.state.name == "COMPLETE"]
    assert out.stopped > 0 and out.choice == max(completed)  # the best last-5 mean: the highest curve


def test_quick_mode_runs_end_to_end(tmp_path):
    """The CI check: the committed tiny table, through the command line, with its table and plot."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "benchmarks" / "simulate.py")
    out, png = tmp_path / "r.json", tmp_path / "p.png"
    cmd = [
        sys.executable,
        script,
        "--quick",
        "--repeats",
        "2",
        "--methods",
        "stl-tune,random",
        "--out",
        out,
        "--plot",
        png,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| stl-tune |" in proc.stdout and "| random |" in proc.stdout
    result = json.loads(out.read_text())
    assert {r["method"] for r in result["rows"]} == {"stl-tune", "random"} and len(result["searches"]) == 4
    assert png.stat().st_size > 0


def test_a_study_file_runs_as_a_method_with_its_own_sampler_and_pruner(tmp_path):
    """--study: seed.yaml under another name searches exactly as the default does; the same file
    without a pruner stops no trial; a file that does not validate is one line, before any search."""
    seed = yaml.safe_load((ROOT / "studies" / "seed.yaml").read_text())
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(seed, sort_keys=False))
    (tmp_path / "unpruned.yaml").write_text(yaml.safe_dump({**seed, "pruner": {"name": "none"}}, sort_keys=False))
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({**seed, "sampler": {"name": "nope"}}, sort_keys=False))
    script, out = str(ROOT / "benchmarks" / "simulate.py"), tmp_path / "r.json"
    cmd = [sys.executable, script, "--quick", "--repeats", "3", "--methods", "stl-tune", "--out", str(out)]
    studies = ["--study", str(tmp_path / "mine.yaml"), "--study", str(tmp_path / "unpruned.yaml")]
    proc = subprocess.run([*cmd, *studies], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    searches = json.loads(out.read_text())["searches"]
    by = {m: [s for s in searches if s["method"] == m] for m in ("stl-tune", "mine", "unpruned")}
    strip = [{k: v for k, v in s.items() if k != "method"} for s in by["stl-tune"]]
    assert [{k: v for k, v in s.items() if k != "method"} for s in by["mine"]] == strip
    assert sum(s["stopped"] for s in by["stl-tune"]) > 0 and sum(s["stopped"] for s in by["unpruned"]) == 0

    proc = subprocess.run([*cmd, "--study", str(tmp_path / "broken.yaml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "nope" in proc.stderr and proc.stderr.startswith("--study: ")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("content", [None, "not json\n", "[1, 2]\n"])
def test_a_missing_or_foreign_table_is_one_line(tmp_path, content):
    path = tmp_path / "t.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        sim.Table.load(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("flag", ["--workers", "--repeats", "--budget", "--jobs", "--configs"])
def test_a_count_of_zero_is_refused_not_taken_as_the_default(monkeypatch, capsys, flag):
    monkeypatch.setattr(sys, "argv", ["simulate.py", "--quick", "--methods", "stl-tune", flag, "0"])
    with pytest.raises(SystemExit) as e:
        sim.main()
    assert e.value.code == 2 and f"argument {flag}: 0: must be 1 or more" in capsys.readouterr().err
