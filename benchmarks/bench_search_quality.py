"""Does stl-tune's search beat what a user would run instead, for the same training epochs?

Data (real, never STL-10, which cannot be downloaded here):
  fashion (default)  Fashion-MNIST, Debian's `dataset-fashion-mnist` (apt-get install -y
                     dataset-fashion-mnist): train = a balanced draw of --per-class images per class
                     (seed 0) from the 60,000 training photos, test = all 10,000 test photos, 28 px
                     grey, written once as a split-layout folder (root/train/<class>/, root/test/<class>/).
  digits             scikit-learn's 1,797 handwritten digits at 32 px, test = a fixed stratified 20 %
                     (saturated near 97.5 %: every method ties there).

Study: studies/seed.yaml's search space at a scale two CPU cores can run (`scaled_study`): --epochs
epochs instead of 200 and every epoch count with them (warm-up, Mixup/CutMix epochs, the pruner's
rungs, early-stopping patience), one block per stage, a quarter of the widths, the crop padding in
proportion to the image size. Everything else is the recipe's default (stl_tune/config.py), which
stays the STL-10 one: nothing here is tuned to the benchmark's data.

Methods (METHODS), each with the same budget of training epochs, the GPU-hours proxy: trials start
until the epochs the study's trials have run reach --budget; trials running then finish (or are
pruned), so every search ends a little past the budget and the table reports what each spent.
  stl-tune        studies/seed.yaml's sampler, pruner and objective, scaled; the known recipe as trial 0
  random+asha     random sampling + successive halving at the same rungs (Ray Tune's usual recipe)
  optuna-default  TPESampler() and MedianPruner() with Optuna's defaults
  random          random sampling, no pruning
  tpe+asha        candidate: TPE (5 start-up trials) and stl-tune's rungs, no warm start, the last epoch's accuracy
  rung50          candidate: stl-tune with its first rung at 50 of 200 epochs instead of 30
The untuned recipe (3 training seeds) is the floor. Each search (a sampler seed per repeat) runs as a
study with 2 `stl-tune worker` processes, then `stl-tune export` -> `stl-tune train --config` -> the
exported config's TEST accuracy, measured on data no search saw.

  python benchmarks/bench_search_quality.py --workdir W        # all methods x 5 repeats: ~2 h quiet
  python benchmarks/bench_search_quality.py --workdir W --methods stl-tune,random --repeats 7
  python benchmarks/bench_search_quality.py --dataset digits --image-size 16 --workdir W   # the digits curve table's scale
  python benchmarks/bench_search_quality.py --quick            # tiny everything: checks it works
A run stopped part-way resumes from its --workdir: a finished search or final training is read, not
run again, and an unfinished search continues its study.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from stl_tune import config
from stl_tune.search import StudySpec, create_or_load_study, open_storage, record
from stl_tune.search.record import DEADLINE_ATTR, EPOCHS_RUN_ATTR, N_TRIALS_ATTR
from stl_tune.search.spec import warmstart
from stl_tune.search.spec.space import load_study_file
from stl_tune.search.state.limits import now

ROOT = Path(__file__).resolve().parents[1]
STL_TUNE = str(Path(sys.executable).with_name("stl-tune"))
WORKERS = 2  # CPU worker processes per search, one torch thread each: the 2 cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per process
SEED_EPOCHS = 200  # studies/seed.yaml's optim.epochs: every epoch count below scales by epochs / this
NO_TRIAL_LIMIT = 100_000  # the studies' trial budget: the epoch budget ends a search, never this
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


# ------------------------------------------------------------------------------------------ data
def _idx(path: Path) -> Any:
    """An IDX file (gzip): big-endian magic (0, 0, dtype 0x08 = uint8, ndim), ndim int32 sizes, data."""
    import numpy as np

    raw = gzip.decompress(path.read_bytes())
    if raw[:3] != b"\0\0\x08":
        raise SystemExit(f"{path}: not a uint8 IDX file")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_fashion(root: Path, per_class: int) -> Path:
    """Fashion-MNIST as 28 px grey PNGs in the split layout: `per_class` training images per class
    (drawn with seed 0) and the whole test set; written once (a marker file says done)."""
    done = root / "DONE"
    if done.is_file():
        return root
    files = {
        name: FASHION_DIR / f"{name}-ubyte.gz"
        for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise SystemExit(
            f"Fashion-MNIST is not installed ({missing[0]} missing): apt-get install -y dataset-fashion-mnist"
        )
    import numpy as np
    from PIL import Image

    x, y = _idx(files["train-images-idx3"]), _idx(files["train-labels-idx1"])
    tx, ty = _idx(files["t10k-images-idx3"]), _idx(files["t10k-labels-idx1"])
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    for split, images, labels, ids in (("train", x, y, train), ("test", tx, ty, range(len(ty)))):
        for i in ids:
            d = root / split / f"{labels[i]}-{FASHION_CLASSES[labels[i]]}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(d / f"{i:05d}.png")
    done.write_text(f"Fashion-MNIST, {per_class} train images per class (seed 0), the 10,000 test images, 28 px\n")
    return root


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
def seed_file() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "studies" / "seed.yaml").read_text())


def scaled_study(data_dir: Path, image_size: int, epochs: int) -> dict[str, Any]:
    """studies/seed.yaml's search space and fixed values at `epochs` epochs and CPU size; the
    sampler, pruner and objective are the method's (see METHODS)."""
    scale = epochs / SEED_EPOCHS
    space = dict(seed_file()["search_space"])
    space["model.width"] = {"type": "categorical", "choices": [8, 12, 16, 24]}  # seed's [32, 48, 64, 96] / 4
    space["augment.mix_epochs"] = {"type": "int", "low": 0, "high": epochs, "step": max(1, round(20 * scale))}
    defaults = config.TrainConfig()
    fixed = {
        "data": {"source": "folder", "dir": str(data_dir), "image_size": image_size},
        "model": {"blocks": [1, 1, 1, 1]},  # the recipe's [2, 2, 2, 2] halved
        "optim": {"epochs": epochs, "warmup_epochs": defaults.optim.warmup_epochs * scale},
        "augment": {"crop_padding": round(defaults.augment.crop_padding * image_size / 96)},  # 12 px of 96
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


def scaled_epochs(n: int, epochs: int, of: int = SEED_EPOCHS) -> int:
    """An epoch count of an `of`-epoch study (a pruner's rung; the seed study's 200), scaled to `epochs`."""
    return max(1, round(n * epochs / of))


@dataclass
class Method:
    label: str
    sampler: dict[str, Any]  # a study file's sampler; "seed" is set per repeat
    pruner: dict[str, Any]  # min_resource / max_resource in epochs of a pruner_epochs-epoch study
    objective: str
    warm_start: bool  # the known recipe (at this scale) as trial 0, never pruned
    pruner_epochs: int = SEED_EPOCHS


def study_method(path: Path) -> Method:
    """A study file's search as `stl-tune run` runs it: its sampler, pruner and objective, the known
    recipe as trial 0; its rungs scaled from the file's own epochs (`optim.epochs`). Its space and
    fixed values are not used: a benchmark's are its scale's."""
    spec = load_study_file(path)  # a bad file is a StudyError naming the file and the key
    return Method(
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}, scaled; the known recipe as trial 0",
        dict(spec.sampler),
        dict(spec.pruner),
        spec.objective,
        warm_start=True,
        pruner_epochs=int(spec.fixed.get("optim.epochs", config.TrainConfig().optim.epochs)),
    )


def _seed_method() -> Method:
    return study_method(ROOT / "studies" / "seed.yaml")


def _seed_rungs() -> dict[str, Any]:
    """seed.yaml's successive-halving rungs, for the peers that prune at the same ones."""
    p = seed_file()["pruner"]
    return {
        "name": "successive_halving",
        "min_resource": p.get("min_resource", 1),
        "reduction_factor": p.get("reduction_factor", 4),
    }


# TPESampler's and MedianPruner's own defaults: the study-file options stl-tune fills in for TPE
# (multivariate, group, constant liar: search/spec/space.py) are switched back off.
OPTUNA_TPE = {"name": "tpe", "multivariate": False, "group": False, "constant_liar": False}
METHODS = {
    "stl-tune": _seed_method,
    "random+asha": lambda: Method(
        "random sampling + successive halving at seed.yaml's rungs (Ray Tune's usual)",
        {"name": "random"},
        _seed_rungs(),
        "val_acc",
        warm_start=False,
    ),
    "optuna-default": lambda: Method(
        "TPESampler() + MedianPruner(), Optuna's defaults",
        dict(OPTUNA_TPE),
        {"name": "median"},
        "val_acc",
        warm_start=False,
    ),
    "random": lambda: Method(
        "random sampling, no pruning", {"name": "random"}, {"name": "none"}, "val_acc", warm_start=False
    ),
    "tpe+asha": lambda: Method(
        "candidate: TPE (5 start-up trials), seed.yaml's rungs, no warm start, the last epoch's accuracy",
        {"name": "tpe", "n_startup_trials": 5},
        _seed_rungs(),
        "val_acc",
        warm_start=False,
    ),
    # Where curves separate: over the 108 complete 15-epoch trials of the first 20 Fashion-MNIST
    # searches, the rank correlation of an epoch's validation accuracy with the last-5 mean was
    # 0.77 at epoch 2 (seed.yaml's first rung, 30 of 200) and 0.92 at epoch 4 (50 of 200).
    "rung50": lambda: dataclasses.replace(
        _seed_method(),
        label="candidate: as stl-tune, first rung at 50 of 200 epochs",
        pruner={**seed_file()["pruner"], "min_resource": 50},
    ),
}


def study_dict(name: str, base: dict[str, Any], m: Method, sampler_seed: int) -> dict[str, Any]:
    epochs = base["fixed"]["optim"]["epochs"]
    pruner = {
        k: scaled_epochs(v, epochs, m.pruner_epochs)
        if k in ("min_resource", "max_resource") and isinstance(v, int)
        else v
        for k, v in m.pruner.items()
    }
    return {
        "name": name,
        "objective": m.objective,
        "search_space": base["search_space"],
        "fixed": base["fixed"],
        "sampler": {**m.sampler, "seed": sampler_seed},
        "pruner": pruner,
    }


# ------------------------------------------------------------------------------------ one search
@dataclass
class Result:
    method: str
    sampler_seed: int
    trials: int = 0  # finished: complete or pruned
    pruned: int = 0
    epochs: int = 0  # run by all of the study's trials
    search_s: float = 0.0
    best_trial: int = -1
    best_value: float = float("nan")
    # (epochs run by the trials finished so far, best last-epoch validation accuracy of a complete
    # trial so far), after each finished trial, in the order they finished: the plot's curve
    trajectory: list[tuple[int, float | None]] = field(default_factory=list)
    test_acc: float | None = None
    final_s: float = 0.0


def epochs_spent(study: optuna.Study) -> int:
    """Epochs run by the study's trials so far, the running ones' included (their epochs_run is
    updated after every epoch)."""
    return sum(t.user_attrs.get(EPOCHS_RUN_ATTR) or 0 for t in study.get_trials(deepcopy=False))


def run_search(workdir: Path, url: str, key: str, base: dict, sampler_seed: int, budget: int) -> Result:
    """Create the study (with the recipe queued for a warm-start method) and run 2 workers on it
    until its trials have run `budget` epochs: then the study's deadline is set to now, so workers
    start no new trial, while a running trial finishes (the objective reads the deadline once, when
    its trial starts: search/worker/objective.py)."""
    m = METHODS[key]()
    name = f"{key}-seed{sampler_seed}"
    spec = StudySpec.from_dict(study_dict(name, base, m, sampler_seed), source=name)
    (workdir / f"{name}.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    study = create_or_load_study(spec, name, open_storage(url, heartbeat=False))
    if m.warm_start:  # enqueue_known_recipe would queue the STL-10 defaults, outside this scaled space
        warmstart.enqueue(study, spec, scaled_recipe(base), "the known recipe, scaled")
    study.set_user_attr(N_TRIALS_ATTR, NO_TRIAL_LIMIT)
    cmd = [
        STL_TUNE,
        "worker",
        "--name",
        name,
        "--storage",
        url,
        "--gpus",
        "none",
        "--workers",
        "1",
        "--artifacts",
        str(workdir / f"artifacts-{name}"),
    ]
    t0 = time.perf_counter()
    logs = [open(workdir / f"{name}-worker{i}.log", "a") for i in range(WORKERS)]
    procs = [
        subprocess.Popen([*cmd, "--worker-index", str(i)], stdout=log, stderr=subprocess.STDOUT, env=ENV)
        for i, log in enumerate(logs)
    ]
    shown = t0
    while any(proc.poll() is None for proc in procs):
        time.sleep(1)  # the budget is overshot by at most a second of epochs; the wall time is right to a second
        spent = epochs_spent(study)
        if spent >= budget and not study.user_attrs.get(DEADLINE_ATTR):
            study.set_user_attr(DEADLINE_ATTR, now().isoformat(timespec="seconds"))
        if time.perf_counter() - shown >= 60:
            shown = time.perf_counter()
            r = tally(study, key, sampler_seed)
            print(
                f"  {name}: {r.trials} finished ({r.pruned} pruned), {spent}/{budget} epochs, {shown - t0:.0f} s",
                flush=True,
            )
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
    trials = study.get_trials(deepcopy=False)
    done = sorted(
        (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)), key=lambda t: t.datetime_complete
    )
    r = Result(
        key,
        sampler_seed,
        trials=len(done),
        pruned=sum(t.state == TrialState.PRUNED for t in done),
        epochs=sum(t.user_attrs.get(EPOCHS_RUN_ATTR) or 0 for t in trials),
    )
    spent, best = 0, None
    for t in done:
        spent += t.user_attrs.get(EPOCHS_RUN_ATTR) or 0
        curve = record.curve(t)
        if t.state == TrialState.COMPLETE and curve and curve[-1] is not None:
            best = curve[-1] if best is None else max(best, curve[-1])
        r.trajectory.append((spent, best))
    return r


# ------------------------------------------------------------------------------ final training
def export(workdir: Path, url: str, r: Result) -> Path:
    out = workdir / f"{r.method}-seed{r.sampler_seed}-best.yaml"
    cli("export", "--name", f"{r.method}-seed{r.sampler_seed}", "--storage", url, "--output", str(out))
    return out


def cli(*args: str) -> None:
    proc = subprocess.run([STL_TUNE, *args], capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise SystemExit(
            f"stl-tune {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def final_training(cfg_file: Path, out: Path, seeds: str) -> tuple[list[float], float]:
    """`stl-tune train --config cfg_file --seeds seeds` on one core: test accuracies, training seconds.
    A run already in `out` with the same config and seeds (an earlier call with this --workdir) is
    read, not trained again."""
    summary = out / "summary.json"
    runs = json.loads(summary.read_text())["runs"] if summary.is_file() else []
    want = config.to_dict(config.load(cfg_file))
    same = [r["seed"] for r in runs] == [int(x) for x in seeds.split(",")] and all(
        {**config.to_dict(config.load(out / r["dir"] / "config.yaml")), "seed": want["seed"]} == want for r in runs
    )
    if not same:
        cli("train", "--config", str(cfg_file), "--out", str(out), "--seeds", seeds)
        runs = json.loads(summary.read_text())["runs"]
    accs = [run["test_acc"] for run in runs]
    seconds = sum(json.loads((out / run["dir"] / "metrics.json").read_text())["seconds"] for run in runs)
    print(
        f"  {out.name}: test {', '.join(f'{100 * a:.1f} %' for a in accs)}, {seconds:.0f} s of training"
        f"{' (trained by an earlier call)' if same else ''}",
        flush=True,
    )
    return accs, seconds


# ------------------------------------------------------------------------------------ the plan
def epoch_seconds(cfg: config.TrainConfig) -> float:
    """Seconds of one epoch of `cfg` on one core here: its second epoch, timed (the first warms up)."""
    import torch

    from stl_tune.train import train

    torch.set_num_threads(1)
    probe = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, epochs=2))
    seconds: list[float] = []
    train(probe, lambda m: seconds.append(m.seconds))
    return seconds[-1]


def plan_line(searches: int, finals: int, final_epochs: int, budget: int, epoch_s: float, val_fraction: float) -> str:
    """The expected wall time: epochs / workers x a timed epoch of the recipe (the space's mean
    cost is close to the recipe's at this scale), final trainings on train+val two at a time."""
    search_s = searches * budget * epoch_s / WORKERS * 1.1  # +10 %: start-up, validation, the budget's overshoot
    final_s = finals * final_epochs * epoch_s / (1 - val_fraction) / WORKERS
    return (
        f"plan: {searches} searches of {budget} epochs and {finals} final trainings of {final_epochs} epochs "
        f"to run; a recipe epoch takes {epoch_s:.1f} s on one core here, so about "
        f"{(search_s + final_s) / 60:.0f} min"
    )


# -------------------------------------------------------------------------------------- the table
def mean_std(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not xs:
        return "-"
    m = f"{statistics.mean(xs) * scale:.{digits}f}"
    return m if len(xs) < 2 else f"{m} ± {statistics.stdev(xs) * scale:.{digits}f}"


def versus(a: list[float], b: list[float]) -> str:
    """Difference of means in points ± its standard error, and the two-sided Mann-Whitney U p-value."""
    if len(a) < 2 or len(b) < 2:
        return "-"
    from scipy.stats import mannwhitneyu

    diff = 100 * (statistics.mean(a) - statistics.mean(b))
    se = 100 * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return f"{diff:+.1f} ± {se:.1f} (p = {mannwhitneyu(a, b, alternative='two-sided').pvalue:.2f})"


def table(results: dict[str, list[Result]], untuned: tuple[list[float], float]) -> str:
    rows = [
        "| method | test acc % (mean ± std) | each repeat | vs stl-tune (points ± se, U-test p) "
        "| trials (pruned) | epochs | search wall min | final training min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = [r.test_acc for r in results.get("stl-tune", []) if r.test_acc is not None]
    for key, rs in results.items():
        accs = [r.test_acc for r in rs if r.test_acc is not None]
        rows.append(
            f"| {key}: {METHODS[key]().label} | {mean_std(accs, 100)} | {', '.join(f'{100 * a:.1f}' for a in accs)} "
            f"| {'-' if key == 'stl-tune' else versus(accs, ours)} "
            f"| {mean_std([r.trials for r in rs], digits=0)} ({mean_std([r.pruned for r in rs], digits=0)}) "
            f"| {mean_std([r.epochs for r in rs], digits=0)} | {mean_std([r.search_s for r in rs], 1 / 60)} "
            f"| {mean_std([r.final_s for r in rs], 1 / 60)} |"
        )
    accs, seconds = untuned
    rows.append(
        f"| untuned recipe at this scale, {len(accs)} training seeds, no search | {mean_std(accs, 100)} "
        f"| {', '.join(f'{100 * a:.1f}' for a in accs)} | {versus(accs, ours)} | - | - | - "
        f"| {seconds / 60 / max(1, len(accs)):.1f} per seed |"
    )
    return "\n".join(rows)


def plot(results: dict[str, list[Result]], budget: int, path: Path, title: str) -> None:
    """Best last-epoch validation accuracy of a complete trial against epochs spent, mean over
    repeats (a repeat counts once it has a complete trial), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = list(range(0, int(budget * 1.3) + 1, max(1, budget // 100)))
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, rs in results.items():
        means = []
        for x in grid:
            found = [best for r in rs for spent, best in [_at(r.trajectory, x)] if best is not None]
            means.append(100 * statistics.mean(found) if len(found) == len(rs) else math.nan)
        ax.plot(grid, means, label=f"{key} ({len(rs)} repeats)")
    ax.axvline(budget, color="grey", linestyle=":", label=f"budget ({budget} epochs)")
    ax.set(xlabel="epochs spent (by finished trials)", ylabel="best validation accuracy found, % (mean)", title=title)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _at(trajectory: list, x: int) -> tuple[int, float | None]:
    """The last point of a trajectory at or before `x` epochs spent."""
    point: tuple[int, float | None] = (0, None)
    for spent, best in trajectory:
        if spent > x:
            break
        point = (spent, best)
    return point


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, 2-epoch trials, 1 repeat: checks it works")
    ap.add_argument("--dataset", choices=("fashion", "digits"), default="fashion")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--repeats", type=int, help="sampler seeds per method [5; quick: 1]")
    ap.add_argument("--epochs", type=int, help="epochs per trial and final training [12; quick: 2]")
    ap.add_argument("--budget", type=int, help="training epochs per search [10 x --epochs; quick: 3 x]")
    ap.add_argument("--per-class", type=int, help="Fashion-MNIST training images per class [200; quick: 30]")
    ap.add_argument("--image-size", type=int, help="pixels per side [fashion 28, digits 32]")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="folder of the written datasets")
    ap.add_argument("--workdir", type=Path, help="studies, logs and runs [a new temporary folder]")
    ap.add_argument(
        "--plot", type=Path, help="the plot's PNG [docs/search_quality_<dataset>.png; quick: in the workdir]"
    )
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    # 12: all six methods x 5 repeats in about 2 h on the 2-core VM (at 15, four took 3.1 h, 2026-12-02)
    epochs = args.epochs or (2 if args.quick else 12)
    budget = args.budget or (3 if args.quick else 10) * epochs
    per_class = args.per_class or (30 if args.quick else 200)  # quick: batch 256 fits 270 training images
    keys = [k.strip() for k in args.methods.split(",")]
    if any(k not in METHODS for k in keys):
        raise SystemExit(f"--methods: choose from {', '.join(METHODS)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-search-quality-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.dataset == "fashion":
        data_dir, size = write_fashion(args.data.resolve() / f"fashion-28-n{per_class}", per_class), 28
    else:
        data_dir, size = write_digits(args.data.resolve() / "digits-32"), 32
    settings = {"dataset": args.dataset, "data": str(data_dir), "epochs": epochs, "budget": budget}
    if args.image_size:  # a workdir of the default size, written before the option, still resumes
        size = settings["image_size"] = args.image_size
    saved_settings = workdir / "settings.json"
    if saved_settings.is_file() and json.loads(saved_settings.read_text()) != settings:
        raise SystemExit(
            f"{workdir} holds a benchmark with other settings ({saved_settings.read_text().strip()}); "
            "use another --workdir"
        )
    saved_settings.write_text(json.dumps(settings))
    base = scaled_study(data_dir, size, epochs)
    import torch  # here, not at the top: the simulator (simulate.py) imports METHODS without torch

    url = f"sqlite:///{workdir}/search.db"
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"optuna {optuna.__version__}; data {data_dir}; work in {workdir}"
    )
    print(f"command: python {' '.join(sys.argv)}; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    recipe = workdir / "recipe.yaml"
    untuned_cfg = scaled_recipe(base)
    untuned_cfg.data.train_on_val = True  # as an export is: final training learns from the validation images too
    config.dump(untuned_cfg, recipe, header="# the known recipe at the benchmark's scale, final training\n")

    saved = workdir / "searches.json"  # finished searches: a rerun with the same --workdir reads them
    done_before = json.loads(saved.read_text()) if saved.is_file() else {}
    names = [(rep, key, f"{key}-seed{10 * rep}") for rep in range(repeats) for key in keys]
    todo = [n for n in names if n[2] not in done_before]
    finals = sum(not (workdir / f"final-{name}" / "summary.json").is_file() for *_, name in names)
    finals += 3 * (not (workdir / "final-untuned" / "summary.json").is_file())  # its 3 seeds
    print(
        f"{len(keys)} methods x {repeats} repeats, trials of {epochs} epochs, {budget} epochs per search, "
        f"{WORKERS} workers",
        flush=True,
    )
    print(
        plan_line(len(todo), finals, epochs, budget, epoch_seconds(scaled_recipe(base)), untuned_cfg.data.val_fraction),
        flush=True,
    )

    t_all = time.perf_counter()
    results: dict[str, list[Result]] = {k: [] for k in keys}
    for rep, key, name in names:  # methods interleaved: a run stopped early still compares like with like
        if name in done_before:
            results[key].append(Result(**done_before[name]))
            continue
        print(f"{name} at {time.strftime('%H:%M:%S')}: {METHODS[key]().label}", flush=True)
        r = run_search(workdir, url, key, base, 10 * rep, budget)  # worker k samples with seed + k
        print(
            f"  done in {r.search_s:.0f} s: {r.trials} trials ({r.pruned} pruned), {r.epochs} epochs; "
            f"best trial {r.best_trial} ({r.best_value:.4f})",
            flush=True,
        )
        results[key].append(r)
        done_before[name] = dataclasses.asdict(r)
        saved.write_text(json.dumps(done_before, indent=1))

    # Final trainings, two at a time (one core each): the untuned recipe's seeds and every export.
    jobs = [(None, recipe, workdir / "final-untuned", "0,1,2")]
    jobs += [
        (r, export(workdir, url, r), workdir / f"final-{r.method}-seed{r.sampler_seed}", "0")
        for rs in results.values()
        for r in rs
    ]
    print(f"final training: {len(jobs)} runs, 2 at a time", flush=True)
    with ThreadPoolExecutor(WORKERS) as pool:
        done = list(pool.map(lambda job: final_training(*job[1:]), jobs))
    untuned = done[0]
    for (r, *_), (accs, seconds) in zip(jobs[1:], done[1:]):
        r.test_acc, r.final_s = accs[0], seconds
    print(f"\ntotal wall time {(time.perf_counter() - t_all) / 60:.1f} min\n")
    print(table(results, untuned))
    png = args.plot or (workdir if args.quick else ROOT / "docs") / f"search_quality_{args.dataset}.png"
    plot(results, budget, png, f"{args.dataset}: {repeats} repeats, {budget} epochs per search")
    print(f"\nplot: {png}")
    (workdir / "results.json").write_text(
        json.dumps(
            {
                "settings": settings,
                "untuned": untuned,
                "searches": {k: [dataclasses.asdict(r) for r in rs] for k, rs in results.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
