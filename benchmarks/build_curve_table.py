"""Build a table of real learning curves over studies/seed.yaml's space, for the search simulator.

Every config of the table is trained in full (early stopping off: the simulator applies the
recipe's patience itself) with --seeds training seeds, each seed with its own validation split,
so the table holds the validation noise a real search meets. Each run records its full config,
its per-epoch validation accuracy (EMA weights, flip TTA: the search's score), its per-epoch
seconds and the TEST accuracy of its final model. The test score is for the simulator's final
scoring only: nothing a search reads ever sees it.

Configs: the known recipe at the benchmark's scale first, then --configs - 1 draws of Optuna's
RandomSampler (seed 0) through the project's own space code (search/spec/space.py's suggest_config),
on the scale bench_search_quality.py's `scaled_study` gives (same data, same epochs).

The table is one JSON-lines file: a header line (data set, scale, command, dates), then a line
per finished run, appended as runs finish. A rerun with the same --table resumes: the runs in the
file are kept, the configs are drawn again (the same draws: the sampler is seeded) and checked
against the file, and only the missing runs train. Commit the file as it grows; a fresh machine
resumes from the committed file. Ctrl-C starts no new run and keeps the runs under way, written as
they finish; a second Ctrl-C stops at once and drops them.

  python benchmarks/build_curve_table.py --table benchmarks/tables/fashion-n200-e12.jsonl
  python benchmarks/build_curve_table.py --table T --per-class 500 --epochs 20 --configs 150
  python benchmarks/build_curve_table.py --table T --data-dir DIR --image-size 32   # any folder dataset
  python benchmarks/build_curve_table.py --quick --table /tmp/t.jsonl              # 4 configs x 2 seeds x 2 epochs
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from stl_tune import config, data
from stl_tune.errors import DataError
from stl_tune.search.spec.space import StudySpec, suggest_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search_quality import ROOT, scaled_recipe, scaled_study, write_fashion  # noqa: E402

FORMAT = 1  # the table's line format; the simulator refuses another


def draw_configs(base: dict[str, Any], n: int) -> tuple[StudySpec, list[tuple[dict, config.TrainConfig]]]:
    """The known recipe at the benchmark's scale, then n - 1 random draws (seeded): (params, config)."""
    spec = StudySpec.from_dict({"name": "table", **base, "sampler": {"name": "random", "seed": 0}},
                               source="curve table")  # fmt: skip
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    recipe = scaled_recipe(base)
    from stl_tune.search.spec.warmstart import params_of

    out = [(params_of(recipe, spec), recipe)]
    while len(out) < n:
        trial = study.ask()
        cfg = suggest_config(trial, spec)
        out.append((dict(trial.params), cfg))
        study.tell(trial, 0.0)
    return spec, out


class CtrlC:
    """Ctrl-C, as the builder takes it: the first sets `stopping` (no run starts after it, the runs
    under way finish and are written), the second ends the builder at once, its training processes
    too. Installed in the builder, ignored in the training processes: Ctrl-C reaches the whole
    process group, and an interrupted run inside concurrent.futures' pool would fail alone while the
    pool went on to the next."""

    def __init__(self, table: Path) -> None:
        self.table, self.stopping = table, False
        signal.signal(signal.SIGINT, self)

    def __call__(self, signum: int, frame: object) -> None:
        if self.stopping:
            for proc in multiprocessing.active_children():
                proc.terminate()
            raise SystemExit(f"stopped: the runs under way dropped; {self.table} resumes")
        self.stopping = True
        # os.write, not print: the signal may come while the main thread is inside a print
        os.write(sys.stdout.fileno(), b"stopping: the runs under way finish and are kept (Ctrl-C again drops them)\n")

    @staticmethod
    def ignore() -> None:
        """The training processes' initializer."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_one(cfg_dict: dict, seed: int) -> dict[str, Any]:
    """Train one (config, seed) on one core, in full, with the test accuracy of its final model."""
    import torch

    from stl_tune.train import train

    torch.set_num_threads(1)
    cfg = config.from_dict(cfg_dict)
    cfg.seed = seed
    cfg.eval.patience = 0  # full curves: the simulator applies the recipe's patience itself
    r = train(cfg, evaluate_test=True)
    return {
        "status": r.status,  # completed | diverged
        "val": [round(h["val_acc"], 5) for h in r.history],  # a count over the validation images: 5 digits are exact
        "seconds": [round(h["seconds"], 3) for h in r.history],
        "test": None if r.test_acc is None else round(r.test_acc, 5),
    }


def read_table(path: Path) -> tuple[dict, list[dict]]:
    """The header and runs of the table in `path` ({}, [] when there is none yet); another file is
    refused in one line, before it is overwritten."""
    if not path.exists():
        return {}, []
    foreign = f"{path} is not a curve table: use another --table"
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except OSError as e:
        raise SystemExit(f"{path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SystemExit(foreign) from None
    if not lines:
        return {}, []
    if not all(isinstance(line, dict) for line in lines):
        raise SystemExit(foreign)
    return lines[0], lines[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", type=Path, required=True, help="the JSON-lines table to write or resume")
    ap.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, 4 configs: checks it works")
    ap.add_argument("--configs", type=int, help="configs, the recipe included [300; quick: 4]")
    ap.add_argument("--seeds", type=int, default=2, help="training seeds per config [2]")
    ap.add_argument("--epochs", type=int, help="epochs per run [12; quick: 2]")
    ap.add_argument("--per-class", type=int, help="Fashion-MNIST training images per class [200; quick: 30]")
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="any folder dataset instead of Fashion-MNIST: train/<class>/ + test/<class>/, or <class>/ "
        "(data.test_fraction of each class is the test split; docs/DATA.md)",
    )
    ap.add_argument("--image-size", type=int, default=28, help="pixels per side [28]")
    ap.add_argument("--name", help="the data set's name in the header [fashion-mnist, or the folder's name]")
    ap.add_argument("--workers", type=int, default=2, help="training processes, one core each [2]")
    ap.add_argument("--data", type=Path, default=ROOT / "data", help="folder of the written datasets [data/]")
    args = ap.parse_args()
    n_configs = args.configs or (4 if args.quick else 300)
    epochs = args.epochs or (2 if args.quick else 12)
    per_class = args.per_class or (30 if args.quick else 200)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if args.data_dir:
        data_dir, name = args.data_dir.resolve(), args.name or args.data_dir.name
    else:
        data_dir = write_fashion(args.data.resolve() / f"fashion-28-n{per_class}", per_class)
        name = args.name or f"fashion-mnist, {per_class} train images per class (seed 0), test = all 10,000"
    base = scaled_study(data_dir, args.image_size, epochs)
    try:  # the tree checked and every image decoded once (the runs read the cache): bad data is one line
        print(data.prepare(config.from_dict(base["fixed"]).data, Console()), flush=True)
    except DataError as e:
        raise SystemExit(str(e)) from None
    spec, configs = draw_configs(base, n_configs)
    header = {
        "format": FORMAT,
        "data": name,
        "epochs": epochs,
        "seeds": args.seeds,
        "configs": n_configs,
        "objective_scale": "validation accuracy in [0, 1] per epoch (EMA weights, flip TTA); test accuracy of the final model",
        "search_space": spec.to_dict()["search_space"],
        "fixed": {k: v for k, v in base["fixed"].items() if k != "data"},
        "command": "python benchmarks/" + shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one torch thread per run",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip
    old_header, rows = read_table(args.table)
    if old_header:
        keep = ("format", "epochs", "seeds", "search_space", "fixed")
        if any(old_header.get(k) != header[k] for k in keep):
            raise SystemExit(f"{args.table} holds a table of other settings: use another --table")
        if old_header["configs"] > n_configs:
            raise SystemExit(
                f"{args.table} holds {old_header['configs']} configs: --configs {old_header['configs']} or more"
            )
        header = {**old_header, "configs": n_configs}
    for row in rows:  # the same seeded draws as the file's: else the resumed table would mix two spaces
        if row["params"] != configs[row["config"]][0]:
            raise SystemExit(f"{args.table}: config {row['config']} differs from this draw; use another --table")
    done = {(r["config"], r["seed"]) for r in rows}
    todo = [(c, s) for c in range(n_configs) for s in range(args.seeds) if (c, s) not in done]
    args.table.parent.mkdir(parents=True, exist_ok=True)
    with args.table.open("w") as f:  # the header again (configs may have grown), then every run kept
        f.write(json.dumps(header) + "\n")
        f.writelines(json.dumps(r) + "\n" for r in rows)
    ctrl_c = CtrlC(args.table)  # before the line below: a Ctrl-C after it is never a traceback
    print(f"{args.table}: {len(rows)} runs kept, {len(todo)} to train ({n_configs} configs x {args.seeds} seeds, "
          f"{epochs} epochs each), {args.workers} at a time", flush=True)  # fmt: skip

    t0, finished = time.perf_counter(), 0
    with ProcessPoolExecutor(args.workers, initializer=CtrlC.ignore) as pool, args.table.open("a") as f:
        pending = {}
        queue = iter(todo)
        for job in queue:  # one run per process: none waits in the pool's queue, where Ctrl-C cannot cancel it
            if ctrl_c.stopping:
                break
            pending[pool.submit(run_one, config.to_dict(configs[job[0]][1]), job[1])] = job
            if len(pending) >= args.workers:
                break
        while pending:
            finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished_now:
                c, s = pending.pop(fut)
                cfg = config.to_dict(configs[c][1])
                cfg["data"].pop("dir")  # this host's path: the header names the data set
                cfg["seed"] = s
                run = {"config": c, "seed": s, "params": configs[c][0], **fut.result(), "cfg": cfg}
                f.write(json.dumps(run) + "\n")
                f.flush()
                finished += 1
                rate = (time.perf_counter() - t0) / finished
                left = (len(todo) - finished) * rate
                last = run["val"][-1] if run["val"] else float("nan")
                print(f"config {c} seed {s}: {run['status']}, val {last:.3f} test {run['test'] or float('nan'):.3f} "
                      f"({sum(run['seconds']):.0f} s); {finished}/{len(todo)}, about {left / 60:.0f} min left",
                      flush=True)  # fmt: skip
                nxt = None if ctrl_c.stopping else next(queue, None)
                if nxt is not None:
                    pending[pool.submit(run_one, config.to_dict(configs[nxt[0]][1]), nxt[1])] = nxt
    if ctrl_c.stopping:
        print(f"stopped: {finished}/{len(todo)} runs added to {args.table}; the same command resumes")
    else:
        print(f"done: {args.table} ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
