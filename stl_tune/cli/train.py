"""`stl-tune train` (the final training, the only command that scores the test split) and
`stl-tune data fake` (a small learnable dataset in STL-10's binary layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate fake STL-10 data for tests and demos.")
app.add_typer(data_app, name="data")


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (e.g. from `stl-tune export`); defaults otherwise.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Dataset folder (sets data.dir).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder; an unfinished run there resumes.", show_default="runs/<config name>")] = None,
) -> None:
    """Train one model (final training: the test split is scored) and write its artefacts."""
    from stl_tune import config as C
    from stl_tune.outputs import write_outputs
    from stl_tune.progress import EpochProgress
    from stl_tune.train import train as run_training

    overrides = list(set_ or []) + ([f"data.dir={data_dir}"] if data_dir is not None else [])
    cfg = C.load(config, overrides)
    out = out or Path("runs") / (config.stem if config is not None else "default")
    with EpochProgress(cfg.optim.epochs) as bar:
        result = run_training(cfg, bar.on_epoch_end, checkpoint=out / "checkpoint.pt", evaluate_test=True)
    paths = write_outputs(out, cfg, result)
    if result.status == "diverged":
        typer.echo(f"diverged: the loss became NaN at epoch {result.diverged_epoch}; see {paths[1]}", err=True)
        raise typer.Exit(1)
    if result.resumed_from_epoch == result.epochs_run:
        typer.echo(f"{out} holds a finished run: its results again (remove {out / 'checkpoint.pt'} to retrain)")
    elif result.resumed_from_epoch:
        typer.echo(f"resumed from epoch {result.resumed_from_epoch} of {out / 'checkpoint.pt'}")
    val = "-" if result.best_val_acc is None else f"{result.best_val_acc:.2%}"
    typer.echo(
        f"{result.status} after {result.epochs_run} epochs in {result.seconds:.0f} s: "
        f"best val {val}, test {result.test_acc:.2%}\nwrote {', '.join(str(p) for p in paths)}"
    )


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
