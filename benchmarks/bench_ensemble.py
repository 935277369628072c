"""The final model: the single best config retrained (today's loop) against ensembles of the
search's trials (`stl-tune ensemble`, issue 23), paired on the same searches.

Data, scale and searches are benchmarks/bench_search_quality.py's (imported, not copied):
Fashion-MNIST, train = --per-class images per class, test = all 10,000 test photos, 28 px;
studies/seed.yaml's space, sampler, pruner and objective at --epochs epochs per trial, --budget
training epochs per search, 2 CPU workers; the known recipe as trial 0. Each search keeps what
`stl-tune ensemble` needs (search/worker/keep.py: every completed trial's validation predictions and the
best keep_models = 5 trial models).

Rows, every one on the same searches (sampler seeds 0, 10, 20, ...), scored on the test set:
  single       `stl-tune export` -> `stl-tune train --seeds 0,1,2`: seed 0's model (today's final step)
  3 seeds      the same run's ensemble.pt (the three seeds averaged)
  trials-N     `stl-tune ensemble --members N`: the search's own trial models, no training
  retrained-N  `stl-tune ensemble --retrain --members N`: the chosen configs trained on train+validation
for N = 1, 2, 3, 5 (at most N distinct trials: greedy selection may pick fewer). Columns: test
accuracy (mean ± std over searches, each search), the paired difference against `single` (mean ±
standard error of the per-search differences, and the Wilcoxon signed-rank p), the distinct members,
and the training epochs each row costs beyond the search, in search epochs (a final training's
epoch on train+validation counts 1/(1 - val_fraction): that many more images).

  python benchmarks/bench_ensemble.py --workdir W            # 5 searches at the benchmark's scale
  python benchmarks/bench_ensemble.py --workdir W --repeats 7
  python benchmarks/bench_ensemble.py --quick                # tiny everything: checks it works
The plot (--plot, docs/ensemble_fashion.png by default) shows each row's paired differences
against `single`, one point per search, beside the epochs the row costs.
A run stopped part-way resumes from its --workdir: a finished search, final training or ensemble is
read, not run again (bench_search_quality's resumability; a retrained member is `train`'s own resume).
The --workdir may be one of bench_search_quality's at the same settings: its stl-tune searches and
their final trainings are reused, so both benchmarks report on the same searches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_search_quality as bsq  # the benchmark's data, scale, searches and final training
import optuna
import torch

from stl_tune import config

SIZES = (1, 2, 3, 5)
METHOD = "stl-tune"  # studies/seed.yaml's own search (bsq.METHODS)


def ensemble(workdir: Path, url: str, name: str, size: int, retrain: bool) -> dict:
    """`stl-tune ensemble` of study `name` with at most `size` members: its summary.json. All sizes of
    one way share a folder (a retrained member is trained once); each size's summary is kept as
    summary-N.json, which a rerun reads instead of building again."""
    out = workdir / f"ens-{'retrained' if retrain else 'trials'}-{name}"
    kept = out / f"summary-{size}.json"
    if not kept.is_file():
        args = ["--name", name, "--storage", url, "--artifacts", str(workdir / f"artifacts-{name}")]
        bsq.cli("ensemble", *args, "--members", str(size), "--out", str(out), *(["--retrain"] if retrain else []))
        shutil.copyfile(out / "summary.json", kept)
    return json.loads(kept.read_text())


def row(summary: dict, trained: bool, val_fraction: float) -> dict:
    """The test accuracy, members and extra epochs of a summary.json's ensemble; `trained`: its members
    were trained for it (on train+validation: counted in search epochs, 1/(1 - val_fraction) each)."""
    epochs = sum(r["epochs_run"] for r in summary["runs"]) if trained else 0
    return {
        "test_acc": summary["ensemble"]["test_acc"],
        "members": len(summary["ensemble"]["members"]),
        "epochs": epochs / (1 - val_fraction),
    }


def finals(workdir: Path, url: str, r: bsq.Result, val_fraction: float) -> dict[str, dict]:
    """Every row of one search: {row name: {test_acc, members, epochs}}."""
    name = f"{r.method}-seed{r.sampler_seed}"
    cfg_file = bsq.export(workdir, url, r)
    accs, _ = bsq.final_training(cfg_file, workdir / f"final-{name}", "0,1,2")
    seeds = json.loads((workdir / f"final-{name}" / "summary.json").read_text())
    first = {**seeds, "runs": seeds["runs"][:1], "ensemble": {"test_acc": accs[0], "members": ["seed-0"]}}
    rows = {"single": row(first, True, val_fraction), "3 seeds": row(seeds, True, val_fraction)}
    for retrain in (False, True):
        for n in SIZES:
            rows[f"{'retrained' if retrain else 'trials'}-{n}"] = row(
                ensemble(workdir, url, name, n, retrain), retrain, val_fraction
            )
    print(
        f"  {name}: " + ", ".join(f"{k} {100 * v['test_acc']:.1f}" for k, v in rows.items()),
        flush=True,
    )
    return rows


def paired(a: list[float], b: list[float]) -> str:
    """Mean ± standard error of the paired differences a - b, in points, and the Wilcoxon signed-rank p."""
    if len(a) < 2:
        return "-"
    d = [100 * (x - y) for x, y in zip(a, b)]
    se = statistics.stdev(d) / math.sqrt(len(d))
    from scipy.stats import wilcoxon

    p = wilcoxon(d).pvalue if any(d) else 1.0
    return f"{statistics.mean(d):+.1f} ± {se:.1f} (p = {p:.2f})"


def table(results: list[dict[str, dict]]) -> str:
    lines = [
        "| row | test acc % (mean ± std) | each search | vs single (paired, points ± se, Wilcoxon p) "
        "| members | extra epochs |",
        "|---|---|---|---|---|---|",
    ]
    single = [r["single"]["test_acc"] for r in results]
    for key in results[0]:
        accs = [r[key]["test_acc"] for r in results]
        lines.append(
            f"| {key} | {bsq.mean_std(accs, 100)} | {', '.join(f'{100 * a:.1f}' for a in accs)} "
            f"| {'-' if key == 'single' else paired(accs, single)} "
            f"| {bsq.mean_std([r[key]['members'] for r in results], digits=1)} "
            f"| {bsq.mean_std([r[key]['epochs'] for r in results], digits=0)} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, dict]], path: Path, title: str) -> None:
    """Per row: each search's test accuracy minus its `single`, in points (dots), their mean (a bar),
    and the row's extra epochs (mean, on a second axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in results[0] if k != "single"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, key in enumerate(keys):
        d = [100 * (r[key]["test_acc"] - r["single"]["test_acc"]) for r in results]
        ax.scatter([i] * len(d), d, color="tab:blue", alpha=0.6, s=18)
        ax.hlines(statistics.mean(d), i - 0.3, i + 0.3, color="tab:blue", linewidth=2.5)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set(ylabel="test accuracy minus single's, points", title=title)
    ax.grid(alpha=0.3, axis="y")
    cost = ax.twinx()
    cost.plot(range(len(keys)), [statistics.mean(r[k]["epochs"] for r in results) for k in keys], "s",
              color="tab:orange", label="extra epochs (mean)")  # fmt: skip
    cost.set_ylabel("extra training epochs (search epochs)", color="tab:orange")
    cost.set_ylim(bottom=0)
    cost.legend(loc="upper right", fontsize=9)
    ax.set_zorder(cost.get_zorder() + 1)  # the searches' dots above the cost's squares
    ax.patch.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, 2-epoch trials, 1 search: checks it works")
    ap.add_argument("--repeats", type=int, help="searches (sampler seeds 0, 10, ...) [5; quick: 1]")
    ap.add_argument("--epochs", type=int, help="epochs per trial and final training [12; quick: 2]")
    ap.add_argument("--budget", type=int, help="training epochs per search [10 x --epochs; quick: 3 x]")
    ap.add_argument("--per-class", type=int, help="Fashion-MNIST training images per class [200; quick: 30]")
    ap.add_argument("--data", type=Path, default=bsq.ROOT / "data", help="folder of the written datasets")
    ap.add_argument("--workdir", type=Path, help="studies, logs and runs [a new temporary folder]")
    ap.add_argument("--plot", type=Path, help="the plot's PNG [docs/ensemble_fashion.png; quick: in the workdir]")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 5)
    epochs = args.epochs or (2 if args.quick else 12)  # bench_search_quality's defaults
    budget = args.budget or (3 if args.quick else 10) * epochs
    per_class = args.per_class or (30 if args.quick else 200)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-ensemble-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = bsq.write_fashion(args.data.resolve() / f"fashion-28-n{per_class}", per_class)
    settings = {"data": str(data_dir), "epochs": epochs, "budget": budget, "method": METHOD}
    saved_settings = workdir / "settings-ensemble.json"  # beside bench_search_quality's
    if saved_settings.is_file() and json.loads(saved_settings.read_text()) != settings:
        raise SystemExit(f"{workdir} holds a benchmark with other settings ({saved_settings.read_text().strip()})")
    saved_settings.write_text(json.dumps(settings))
    base = bsq.scaled_study(data_dir, 28, epochs)
    val_fraction = config.from_dict(base["fixed"]).data.val_fraction
    url = f"sqlite:///{workdir}/search.db"
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"optuna {optuna.__version__}; data {data_dir}; work in {workdir}"
    )
    print(f"command: python {' '.join(sys.argv)}; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)

    saved = workdir / "searches.json"  # finished searches: a rerun with the same --workdir reads them
    done_before = json.loads(saved.read_text()) if saved.is_file() else {}
    searches = []
    for rep in range(repeats):
        name = f"{METHOD}-seed{10 * rep}"
        if name in done_before:
            searches.append(bsq.Result(**done_before[name]))
            continue
        print(f"{name} at {time.strftime('%H:%M:%S')}", flush=True)
        r = bsq.run_search(workdir, url, METHOD, base, 10 * rep, budget)
        print(f"  done in {r.search_s:.0f} s: {r.trials} trials ({r.pruned} pruned), {r.epochs} epochs", flush=True)
        searches.append(r)
        done_before[name] = dataclasses.asdict(r)
        saved.write_text(json.dumps(done_before, indent=1))

    print(f"final models of {len(searches)} searches, two at a time", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(bsq.WORKERS) as pool:
        results = list(pool.map(lambda r: finals(workdir, url, r, val_fraction), searches))
    print(f"\nfinal models: {(time.perf_counter() - t0) / 60:.1f} min\n")
    print(table(results))
    (workdir / "results-ensemble.json").write_text(json.dumps({"settings": settings, "rows": results}, indent=1))
    png = args.plot or (workdir if args.quick else bsq.ROOT / "docs") / "ensemble_fashion.png"
    plot(results, png, f"Final model vs single config, {len(results)} searches of the default (Fashion-MNIST)")
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
