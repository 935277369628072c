"""Does the search pay for itself? Search quality on real data, end to end, on 2 CPU cores.

Data: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes), written once as
32 px PNGs in the split layout (root/train/<class>/, root/test/<class>/); test = a fixed stratified
20 % (seed 0), never seen by a search.

Study: studies/seed.yaml's search space at a scale a 2-core CPU can run (see `scaled_study`): 20
epochs instead of 200, and every epoch count with them (warm-up, Mixup/CutMix epochs, the pruner's
first rung, early-stopping patience), 32 px images with the crop padding in proportion, one block
per stage and a quarter of the widths. Everything else is the recipe's default (stl_tune/config.py),
which stays the STL-10 one: nothing here is tuned to digits.

For each pairing (sampler + pruner + objective, with or without the known recipe as trial 0) and
each repeat (a different sampler seed): the study is created through the library with its trial
budget, 2 `stl-tune worker` processes run it, then `stl-tune export` -> `stl-tune train --config`
-> the exported config's TEST accuracy. Also the untuned recipe at the same scale and length
(`stl-tune train --seeds`). Prints Markdown tables for docs/BENCHMARKS.md.

  python benchmarks/bench_search_quality.py                    # A (before) and C (seed.yaml), 3 repeats: ~1 h
  python benchmarks/bench_search_quality.py --pairings B,D      # the other candidates
  python benchmarks/bench_search_quality.py --workdir W --repeats 5  # W of an earlier run: its searches
                                                                     # and final trainings are reused
  python benchmarks/bench_search_quality.py --quick            # 3 trials of 3 epochs: checks it works
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from stl_tune import config
from stl_tune.search import warmstart
from stl_tune.search.space import StudySpec
from stl_tune.search.study import create_or_load_study, open_storage
from stl_tune.search.trials import N_TRIALS_ATTR

ROOT = Path(__file__).resolve().parents[1]
STL_TUNE = str(Path(sys.executable).with_name("stl-tune"))
WORKERS = 2  # CPU worker processes per search, one torch thread each: the 2 cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per process
SEED_EPOCHS = 200  # studies/seed.yaml's optim.epochs: every epoch count below scales by epochs / this


# ------------------------------------------------------------------------------------------ data
def write_digits(root: Path, size: int = 32) -> Path:
    """The digits as size-px grey PNGs in the split layout; written once (a marker file says done)."""
    done = root / "DONE"
    if done.is_file():
        return root
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # images: float 0..16, [1797, 8, 8]
    pixels = (digits.images * (255 / 16)).round().astype("uint8")
    index = range(len(pixels))
    train, test = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=0)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            d = root / split / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i], mode="L").resize((size, size), Image.BILINEAR).save(d / f"{i:04d}.png")
    done.write_text(f"sklearn digits, {len(train)} train / {len(test)} test, {size} px\n")
    return root


# ----------------------------------------------------------------------------------------- study
def scaled_study(data_dir: Path, epochs: int) -> dict[str, Any]:
    """studies/seed.yaml's search space and fixed values at `epochs` epochs and CPU size; the
    sampler, pruner and objective are the pairing's (see PAIRINGS)."""
    seed = yaml.safe_load((ROOT / "studies" / "seed.yaml").read_text())
    scale = epochs / SEED_EPOCHS
    space = dict(seed["search_space"])
    space["model.width"] = {"type": "categorical", "choices": [8, 12, 16, 24]}  # seed's [32, 48, 64, 96] / 4
    space["augment.mix_epochs"] = {"type": "int", "low": 0, "high": epochs, "step": max(1, round(20 * scale))}
    defaults = config.TrainConfig()
    fixed = {
        "data": {"source": "folder", "dir": str(data_dir), "image_size": 32},
        "model": {"blocks": [1, 1, 1, 1]},  # the recipe's [2, 2, 2, 2] halved
        "optim": {"epochs": epochs, "warmup_epochs": defaults.optim.warmup_epochs * scale},
        "augment": {"crop_padding": round(defaults.augment.crop_padding * 32 / 96)},  # 12 px of 96 -> 4 of 32
        "eval": {"patience": max(1, round(defaults.eval.patience * scale))},
    }
    return {"search_space": space, "fixed": fixed}


def scaled_recipe(study: dict[str, Any]) -> config.TrainConfig:
    """The known recipe (config defaults) at the study's scale: its fixed values, width 64 / 4 and
    Mixup/CutMix for the first half of training (100 of 200 epochs)."""
    cfg = config.from_dict(study["fixed"])
    cfg.model.width = config.TrainConfig().model.width // 4
    cfg.augment.mix_epochs = round(config.TrainConfig().augment.mix_epochs * cfg.optim.epochs / SEED_EPOCHS)
    return config.validate(cfg)


@dataclass(frozen=True)
class SeedEpochs:
    """A pruner option in epochs of the 200-epoch seed study, scaled with the benchmark's length."""

    n: int

    def at(self, epochs: int) -> int:
        return max(1, round(self.n * epochs / SEED_EPOCHS))


@dataclass
class Pairing:
    label: str
    sampler: dict[str, Any]  # TPE options over the library's defaults (multivariate, group, constant liar)
    pruner: dict[str, Any]
    objective: str
    warm_start: bool  # the known recipe (at this scale) as trial 0, never pruned


PAIRINGS = {
    # studies/seed.yaml: rungs at 10, 30 and 90 of 200 epochs (1, 3 and 9 of 20)
    "A": Pairing("before issue 8: TPE (10 start-up) + Hyperband, best_val_acc, no warm start",
                 {"n_startup_trials": 10}, {"name": "hyperband", "min_resource": SeedEpochs(10), "reduction_factor": 3},
                 "best_val_acc", warm_start=False),
    "B": Pairing("TPE (5 start-up) + successive halving, last5_val_acc, recipe as trial 0",
                 {"n_startup_trials": 5}, {"name": "successive_halving", "min_resource": SeedEpochs(10), "reduction_factor": 3},
                 "last5_val_acc", warm_start=True),
    # B with its first rung at 30 of 200 epochs: at 1 of 20, every trial is still near chance (~10 %).
    # studies/seed.yaml's pairing since the 24-trial comparison (docs/BENCHMARKS.md).
    "C": Pairing("seed.yaml: as B, first rung at 3 epochs (30 of 200) instead of 1",
                 {"n_startup_trials": 5}, {"name": "successive_halving", "min_resource": SeedEpochs(30), "reduction_factor": 3},
                 "last5_val_acc", warm_start=True),
    # Hyperband's brackets (as A) hedge against a first rung without signal; one history for TPE
    "D": Pairing("TPE (5 start-up) + Hyperband whose sampler sees every bracket, last5_val_acc, recipe as trial 0",
                 {"n_startup_trials": 5}, {"name": "hyperband_shared", "min_resource": SeedEpochs(10), "reduction_factor": 3},
                 "last5_val_acc", warm_start=True),
}  # fmt: skip


def study_dict(name: str, base: dict[str, Any], p: Pairing, sampler_seed: int) -> dict[str, Any]:
    epochs = base["fixed"]["optim"]["epochs"]
    scaled = {k: v.at(epochs) if isinstance(v, SeedEpochs) else v for k, v in p.pruner.items()}
    return {
        "name": name,
        "objective": p.objective,
        "search_space": base["search_space"],
        "fixed": base["fixed"],
        "sampler": {"name": "tpe", "seed": sampler_seed, **p.sampler},
        "pruner": scaled,
    }


# ------------------------------------------------------------------------------------ one repeat
@dataclass
class Result:
    pairing: str
    sampler_seed: int
    trials: int = 0
    pruned: int = 0
    epochs: int = 0
    search_s: float = 0.0
    best_trial: int = -1
    best_value: float = float("nan")
    test_acc: float | None = None
    final_s: float = 0.0


def run_search(workdir: Path, url: str, key: str, base: dict, sampler_seed: int, trials: int) -> Result:
    """Create the study (with the recipe queued for a warm-start pairing), run 2 workers on it."""
    p = PAIRINGS[key]
    name = f"{key}-seed{sampler_seed}"
    spec = StudySpec.from_dict(study_dict(name, base, p, sampler_seed), source=name)
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    study = create_or_load_study(spec, name, open_storage(url, heartbeat=False))
    if p.warm_start:  # enqueue_known_recipe would queue the STL-10 defaults, outside this scaled space
        warmstart.enqueue(study, spec, scaled_recipe(base), "the known recipe, scaled")
    study.set_user_attr(N_TRIALS_ATTR, trials)
    cmd = [STL_TUNE, "worker", "--name", name, "--storage", url, "--gpus", "none", "--workers", "1",
           "--artifacts", str(workdir / f"artifacts-{name}")]  # fmt: skip
    t0 = time.perf_counter()
    logs = [open(workdir / f"{name}-worker{i}.log", "w") for i in range(WORKERS)]
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i)], stdout=log, stderr=subprocess.STDOUT, env=ENV)
             for i, log in enumerate(logs)]  # fmt: skip
    shown = t0
    while any(proc.poll() is None for proc in procs):
        time.sleep(1)  # the search's wall time is right to a second; progress every 30 s
        if time.perf_counter() - shown >= 30:
            shown = time.perf_counter()
            r = tally(study, key, sampler_seed)
            print(f"  {name}: {r.trials}/{trials} finished ({r.pruned} pruned), {r.epochs} epochs, "
                  f"{shown - t0:.0f} s", flush=True)  # fmt: skip
    for log in logs:
        log.close()
    for i, proc in enumerate(procs):
        if proc.returncode:
            tail = (workdir / f"{name}-worker{i}.log").read_text()[-2000:]
            raise SystemExit(f"{name}: worker {i} exited {proc.returncode}:\n{tail}")
    r = tally(study, key, sampler_seed)
    r.search_s = time.perf_counter() - t0
    best = study.best_trial
    r.best_trial, r.best_value = best.number, best.value
    return r


def tally(study: optuna.Study, key: str, sampler_seed: int) -> Result:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return Result(key, sampler_seed, trials=len(done), pruned=sum(t.state == TrialState.PRUNED for t in done),
                  epochs=sum(t.user_attrs.get("epochs_run", 0) for t in done))  # fmt: skip


def export(workdir: Path, url: str, r: Result) -> Path:
    out = workdir / f"{r.pairing}-seed{r.sampler_seed}-best.yaml"
    cli("export", "--name", f"{r.pairing}-seed{r.sampler_seed}", "--storage", url, "--output", str(out))
    return out


def cli(*args: str) -> None:
    proc = subprocess.run([STL_TUNE, *args], capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise SystemExit(f"stl-tune {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def final_training(cfg_file: Path, out: Path, seeds: str) -> tuple[list[float], float]:
    """`stl-tune train --config cfg_file --seeds seeds` on one core: test accuracies, training seconds.
    A run already in `out` with the same config and seeds (an earlier call with this --workdir) is
    read, not trained again."""
    summary = out / "summary.json"
    runs = json.loads(summary.read_text())["runs"] if summary.is_file() else []
    want = config.to_dict(config.load(cfg_file))
    same = [r["seed"] for r in runs] == [int(x) for x in seeds.split(",")] and all(
        {**config.to_dict(config.load(out / r["dir"] / "config.yaml")), "seed": want["seed"]} == want for r in runs)
    if not same:
        cli("train", "--config", str(cfg_file), "--out", str(out), "--seeds", seeds)
        runs = json.loads(summary.read_text())["runs"]
    accs = [run["test_acc"] for run in runs]
    seconds = sum(json.loads((out / run["dir"] / "metrics.json").read_text())["seconds"] for run in runs)
    print(f"  {out.name}: test {', '.join(f'{100 * a:.1f} %' for a in accs)}, {seconds:.0f} s of training"
          f"{' (trained by an earlier call)' if same else ''}", flush=True)  # fmt: skip
    return accs, seconds


# -------------------------------------------------------------------------------------- the table
def mean_std(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not xs:
        return "-"
    m = f"{statistics.mean(xs) * scale:.{digits}f}"
    return m if len(xs) < 2 else f"{m} ± {statistics.stdev(xs) * scale:.{digits}f}"


def table(results: dict[str, list[Result]], untuned: tuple[list[float], float]) -> str:
    rows = ["| pairing | test acc % (mean ± std) | each repeat | trials (pruned) | epochs trained "
            "| search wall min | final training min |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, rs in results.items():
        accs = [r.test_acc for r in rs if r.test_acc is not None]
        rows.append(
            f"| {key}: {PAIRINGS[key].label} | {mean_std(accs, 100)} | {', '.join(f'{100 * a:.1f}' for a in accs)} "
            f"| {mean_std([r.trials for r in rs], digits=0)} ({mean_std([r.pruned for r in rs])}) "
            f"| {mean_std([r.epochs for r in rs], digits=0)} | {mean_std([r.search_s for r in rs], 1 / 60)} "
            f"| {mean_std([r.final_s for r in rs], 1 / 60)} |"
        )
    accs, seconds = untuned
    rows.append(f"| untuned recipe at this scale, {len(accs)} training seeds, no search | {mean_std(accs, 100)} "
                f"| {', '.join(f'{100 * a:.1f}' for a in accs)} | - | - | - | {seconds / 60 / max(1, len(accs)):.1f} per seed |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 trials of 3 epochs, 1 repeat: checks the pipeline")
    ap.add_argument("--pairings", default="A,C", help=f"comma list of {', '.join(PAIRINGS)}")
    ap.add_argument("--repeats", type=int, help="sampler seeds per pairing [3; quick: 1]")
    ap.add_argument("--trials", type=int, help="finished trials per search [24; quick: 3]")
    ap.add_argument("--epochs", type=int, help="epochs per trial and final training [20; quick: 3]")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "digits-32", help="digits cache folder")
    ap.add_argument("--workdir", type=Path, help="studies, logs and runs [a new temporary folder]")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    trials = args.trials or (3 if args.quick else 24)
    epochs = args.epochs or (3 if args.quick else 20)
    keys = [k.strip() for k in args.pairings.split(",")]
    if any(k not in PAIRINGS for k in keys):
        raise SystemExit(f"--pairings: choose from {', '.join(PAIRINGS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-search-quality-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = write_digits(args.data.resolve())
    base = scaled_study(data_dir, epochs)
    url = f"sqlite:///{workdir}/search.db"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"optuna {optuna.__version__}; data {data_dir}; work in {workdir}")  # fmt: skip
    print(f"command: python {' '.join(sys.argv)}; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"{len(keys)} pairings x {repeats} repeats x {trials} trials of {epochs} epochs, {WORKERS} workers\n", flush=True)
    recipe = workdir / "recipe.yaml"
    untuned_cfg = scaled_recipe(base)
    untuned_cfg.data.train_on_val = True  # as an export is: final training learns from the validation images too
    config.dump(untuned_cfg, recipe, header="# the known recipe at the benchmark's scale, final training\n")

    t_all = time.perf_counter()
    saved = workdir / "searches.json"  # finished searches: a rerun with the same --workdir skips them
    done_before = json.loads(saved.read_text()) if saved.is_file() else {}
    results: dict[str, list[Result]] = {k: [] for k in keys}
    for rep in range(repeats):  # pairings interleaved: a run stopped early still compares like with like
        for key in keys:
            seed = 10 * rep  # worker k samples with seed + k: seeds 0, 1, 2 would share streams
            name = f"{key}-seed{seed}"
            if name in done_before:
                results[key].append(Result(**done_before[name]))
                continue
            print(f"{name} at {time.strftime('%H:%M:%S')}: {PAIRINGS[key].label}", flush=True)
            r = run_search(workdir, url, key, base, seed, trials)
            print(f"  done in {r.search_s:.0f} s: best trial {r.best_trial} ({r.best_value:.4f})", flush=True)
            results[key].append(r)
            done_before[name] = dataclasses.asdict(r)
            saved.write_text(json.dumps(done_before, indent=1))

    # Final trainings, two at a time (one core each): the untuned recipe's seeds and every export.
    jobs = [(None, recipe, workdir / "final-untuned", "0,1,2")]
    jobs += [(r, export(workdir, url, r), workdir / f"final-{r.pairing}-seed{r.sampler_seed}", "0")
             for rs in results.values() for r in rs]  # fmt: skip
    print(f"final training: {len(jobs)} runs, 2 at a time", flush=True)
    with ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda job: final_training(*job[1:]), jobs))
    untuned = done[0]
    for (r, *_), (accs, seconds) in zip(jobs[1:], done[1:]):
        r.test_acc, r.final_s = accs[0], seconds
    print(f"\ntotal wall time {(time.perf_counter() - t_all) / 60:.1f} min\n")
    print(table(results, untuned))


if __name__ == "__main__":
    main()
