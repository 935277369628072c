"""`stl-tune train` (the final training, the only command that scores the test split; --seeds: once
per seed, with the spread), `stl-tune evaluate` (a trained model file on a folder dataset) and
`stl-tune data fake` (a small learnable dataset in STL-10's binary layout)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from stl_tune.config import TrainConfig
    from stl_tune.train import TrainResult

app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate fake STL-10 data for tests and demos.")
app.add_typer(data_app, name="data")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (e.g. from `stl-tune export`); defaults otherwise.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder (sets data.dir).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder; an unfinished run there resumes.", show_default="runs/<config name>")] = None,
    seeds: Annotated[str | None, typer.Option(help="Train once per seed, e.g. 0,1,2, into OUT/seed-N/, and write OUT/summary.json: mean ± std of test accuracy.")] = None,
) -> None:
    """Train one model (final training: the test split is scored) and write its artefacts."""
    from stl_tune import config as C

    overrides = list(set_ or []) + ([f"data.dir={data_dir}"] if data_dir is not None else [])
    cfg = C.load(config, overrides)
    out = out or Path("runs") / (config.stem if config is not None else "default")
    if seeds is None:
        if _train_one(cfg, out).status == "diverged":
            raise typer.Exit(1)
        return
    from stl_tune.outputs import write_seed_summary

    results: dict[int, TrainResult] = {}
    for seed in _parse_seeds(seeds):
        typer.echo(f"seed {seed}: {out / f'seed-{seed}'}")
        results[seed] = _train_one(dataclasses.replace(cfg, seed=seed), out / f"seed-{seed}")
    s = write_seed_summary(out, results)
    if s["finished"]:
        spread = "" if s["test_acc_std"] is None else f" ± {100 * s['test_acc_std']:.1f}"
        typer.echo(f"test accuracy {100 * s['test_acc_mean']:.1f} %{spread} over {s['finished']} seeds")
    diverged = [seed for seed, r in results.items() if r.status == "diverged"]
    typer.echo(f"wrote {out / 'summary.json'}" + (f"; diverged: seeds {', '.join(map(str, diverged))}" if diverged else ""))
    if diverged:
        raise typer.Exit(1)


def _parse_seeds(text: str) -> list[int]:
    from stl_tune.errors import UserError

    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds expects a comma list of seeds such as 0,1,2, got {text!r}") from None
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds expects distinct seeds >= 0, got {text!r}")
    return seeds


def _train_one(cfg: TrainConfig, out: Path) -> TrainResult:
    """Train `cfg` into `out` (resuming a run there), write its artefacts and say how it went."""
    from stl_tune.outputs import write_outputs
    from stl_tune.progress import EpochProgress
    from stl_tune.train import train as run_training

    with EpochProgress(cfg.optim.epochs) as bar:
        result = run_training(cfg, bar.on_epoch_end, checkpoint=out / "checkpoint.pt", evaluate_test=True)
    paths = write_outputs(out, cfg, result)
    if result.status == "diverged":
        typer.echo(f"diverged: the loss became NaN at epoch {result.diverged_epoch}; see {paths[1]}", err=True)
        return result
    if result.resumed_from_epoch == result.epochs_run:
        typer.echo(f"{out} holds a finished run: its results again (remove {out / 'checkpoint.pt'} to retrain)")
    elif result.resumed_from_epoch:
        typer.echo(f"resumed from epoch {result.resumed_from_epoch} of {out / 'checkpoint.pt'}")
    val = "-" if result.best_val_acc is None else f"{result.best_val_acc:.2%}"
    typer.echo(
        f"{result.status} after {result.epochs_run} epochs in {result.seconds:.0f} s: "
        f"best val {val}, test {result.test_acc:.2%}\nwrote {', '.join(str(p) for p in paths)}"
    )
    return result


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="A model file written by `stl-tune train` (OUT/model.pt).")],
    data_dir: Annotated[Path, typer.Option(help="Folder dataset: split layout (test/ is scored) or class layout (every image is scored).")],
    out: Annotated[Path | None, typer.Option(help="Folder for metrics.json and confusion.png.", show_default="beside the model: eval-<data dir name>/")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Score a trained model on a folder dataset, without training: accuracy, per-class accuracy, confusion matrix."""
    from rich.console import Console
    from rich.table import Table

    from stl_tune.evaluate import evaluate as run_evaluation
    from stl_tune.evaluate import write_evaluation

    ev = run_evaluation(model, data_dir, device)
    paths = write_evaluation(out or model.parent / f"eval-{data_dir.resolve().name}", ev)
    table = Table("class", "images", "correct", "accuracy", title=f"{ev.model} on {ev.data_dir}")
    for i, (name, row, acc) in enumerate(zip(ev.classes, ev.confusion, ev.per_class_acc)):
        table.add_row(name, str(sum(row)), str(row[i]), f"{acc:.1%}")
    Console().print(table)
    typer.echo(f"scored {ev.scored}{', flip TTA' if ev.tta else ''}: accuracy {ev.accuracy:.2%}")
    typer.echo(f"wrote {', '.join(str(p) for p in paths)}")


@data_app.command("fake")
def data_fake(
    out: Annotated[Path, typer.Option(help="Folder to write stl10_binary/ into.")],
    train_per_class: Annotated[int, typer.Option(min=1, help="Labelled training images per class.")] = 50,
    test_per_class: Annotated[int, typer.Option(min=1, help="Test images per class.")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed of the generated images.")] = 0,
) -> None:
    """Write a small learnable dataset in STL-10's exact binary layout."""
    from stl_tune.data import write_fake_stl10

    root = write_fake_stl10(out, train_per_class=train_per_class, test_per_class=test_per_class, seed=seed)
    typer.echo(f"wrote {root}: {10 * train_per_class} train and {10 * test_per_class} test images")
