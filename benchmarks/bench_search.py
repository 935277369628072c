"""What the search machinery costs and saves, on fake data (CPU, a few minutes on 2 cores):

  1. overhead   time per trial spent outside training: the worker's budget checks, Optuna's ask
                and sampler (TPE), suggest, report/should_prune, user attrs, checkpoint uploads to
                the artifact store, tell, heartbeats; against the trial's pure training time.
  2. pruning    the same study (same seed, same trials budget) with the median pruner and with
                none: epochs trained, and each run's best validation accuracy.
  3. throughput finished trials per minute with 1, 2 and 4 CPU worker processes (`stl-tune run`),
                from the storage's timestamps (first trial start to last trial end), and with
                process start-up included.

Sections 1 and 2 run in this process with one torch thread; the trainer is wrapped to time pure
training (its wall time minus the time spent in our per-epoch callback).

  python benchmarks/bench_search.py                       # SQLite in a temporary folder
  python benchmarks/bench_search.py --storage postgresql+psycopg://user:pass@host/db
Results go to docs/BENCHMARKS.md (the tables printed are Markdown).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml
from optuna.trial import TrialState

from stl_tune.data import write_fake_stl10
from stl_tune.search import create_or_load_study, mask_url, open_storage
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import work
from stl_tune.train import train


def study_dict(data_dir: Path, epochs: int, pruner: str) -> dict:
    """A learnable search on fake data: lr spans too-small to good, so there is something to prune."""
    return {
        "name": "bench",
        "search_space": {
            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
            "model.se": {"type": "categorical", "choices": [True, False]},
            "smoothing.start": {"type": "float", "low": 0.0, "high": 0.2},
        },
        "fixed": {
            "data": {"dir": str(data_dir), "image_size": 24},
            "model": {"width": 8, "blocks": [1, 1, 1, 1]},
            "optim": {"epochs": epochs, "batch_size": 32, "warmup_epochs": 1},
            "augment": {"randaugment_ops": 0, "crop_padding": 2, "mix_epochs": 2},
            "runtime": {"checkpoint_interval_s": 0},  # upload every epoch: the overhead's upper bound
        },
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 4},
        "pruner": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2} if pruner == "median" else "none",
    }


class TimedTrain:
    """Wraps stl_tune.train.train: pure training seconds = its wall time minus our callback's."""

    def __init__(self) -> None:
        self.train_s = self.callback_s = 0.0
        self.epochs = 0

    def __call__(self, cfg, on_epoch_end, **kw):
        def timed(m):
            t = time.perf_counter()
            stop = on_epoch_end(m)
            self.callback_s += time.perf_counter() - t
            self.epochs += 1
            return stop

        t = time.perf_counter()
        try:
            return train(cfg, timed, **kw)
        finally:
            self.train_s += time.perf_counter() - t


def in_process(url: str, data_dir: Path, workdir: Path, name: str, trials: int, epochs: int, pruner: str) -> dict:
    spec = StudySpec.from_dict(study_dict(data_dir, epochs, pruner))
    study = create_or_load_study(spec, name, open_storage(url))
    timer = TimedTrain()
    t = time.perf_counter()
    work(study, Objective(spec, workdir / f"artifacts-{name}", trainer=timer), trials)
    wall = time.perf_counter() - t
    pure = timer.train_s - timer.callback_s
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return {
        "trials": len(done),
        "pruned": sum(t.state == TrialState.PRUNED for t in done),
        "epochs": timer.epochs,
        "best": study.best_value,
        "pure_s": pure,
        "overhead_ms": 1000 * (wall - pure) / len(done),
        "epoch_overhead_ms": 1000 * timer.callback_s / max(1, timer.epochs),
        "train_ms": 1000 * pure / len(done),
    }


def throughput(url: str, study_file: Path, workdir: Path, name: str, workers: int, trials: int) -> tuple[float, float]:
    """(trials/min between first start and last end, trials/min including process start-up)."""
    cmd = [
        str(Path(sys.executable).with_name("stl-tune")),
        "run",
        "--study",
        str(study_file),
        "--name",
        name,
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--gpus",
        "none",
        "--storage",
        url,
        "--artifacts",
        str(workdir / f"artifacts-{name}"),
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    done = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.COMPLETE,))
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    return 60 * len(done) / span.total_seconds(), 60 * len(done) / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", help="storage URL [default: SQLite in a temporary folder]")
    ap.add_argument("--trials", type=int, default=16, help="trials of the pruned/unpruned studies")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--throughput-trials", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4", help="CPU worker counts to time")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # sections 1-2: one worker's share of a small CPU

    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    data_dir = write_fake_stl10(workdir / "data", train_per_class=50, test_per_class=10)
    url = args.storage or f"sqlite:///{workdir}/bench.db"
    tag = str(time.time_ns())  # fresh study names on a reused server
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, storage {mask_url(url).split('://')[0]}\n"
    )

    in_process(url, data_dir, workdir, f"warm-{tag}", 1, 1, "none")  # loads and caches the data once
    runs = {
        p: in_process(url, data_dir, workdir, f"{p}-{tag}", args.trials, args.epochs, p) for p in ("none", "median")
    }

    print(
        "| pruner | trials (pruned) | epochs trained | best val acc | train ms/trial | overhead ms/trial | of which per epoch (report, attrs, checkpoint) |"
    )
    print("|---|---|---|---|---|---|---|")
    for p, r in runs.items():
        share = r["overhead_ms"] / (r["overhead_ms"] + r["train_ms"])
        print(
            f"| {p} | {r['trials']} ({r['pruned']}) | {r['epochs']} | {r['best']:.4f} | {r['train_ms']:.0f} | "
            f"{r['overhead_ms']:.0f} ({share:.0%}) | {r['epoch_overhead_ms']:.1f} ms x epochs |"
        )
    saved = 1 - runs["median"]["epochs"] / runs["none"]["epochs"]
    print(f"\nepochs saved by the median pruner: {saved:.0%}\n")

    study_file = workdir / "bench.yaml"
    study_file.write_text(yaml.safe_dump(study_dict(data_dir, args.epochs, "none")))
    print("| CPU workers | trials/min (steady) | trials/min (with start-up) |")
    print("|---|---|---|")
    for k in map(int, args.workers.split(",")):
        steady, total = throughput(url, study_file, workdir, f"throughput-{k}-{tag}", k, args.throughput_trials)
        print(f"| {k} | {steady:.1f} | {total:.1f} |")


if __name__ == "__main__":
    main()
