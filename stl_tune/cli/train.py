"""`stl-tune train` (the final training, the only command that scores the test split; --seeds: once
per seed, with the spread and the seeds' ensemble), `stl-tune evaluate` (a trained model file on a
folder dataset), `stl-tune predict` (unlabelled images) and `stl-tune data fake` (a small learnable
dataset in STL-10's binary layout)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from stl_tune.config import TrainConfig
    from stl_tune.train import EpochMetrics, TrainResult

app = typer.Typer(no_args_is_help=True)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate fake STL-10 data for tests and demos.")
app.add_typer(data_app, name="data")

STOPPED_EXIT = 130  # a run stopped by Ctrl-C or SIGTERM, resumable (as `stl-tune run` exits)


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML config (e.g. from `stl-tune export`); defaults otherwise."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=3e-4 (repeatable).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Dataset folder (sets data.dir): class sub-folders, train/ val/ test/, or STL-10's stl10_binary/."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Output folder; an unfinished run there resumes, a finished one is shown.",
            show_default="runs/<config name>",
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Train once per seed, e.g. 0,1,2, into OUT/seed-N/; write OUT/summary.json (mean ± std of test accuracy), OUT/ensemble.pt and OUT/model.pt."
        ),
    ] = None,
) -> None:
    """Train one model (final training: the test split is scored) and write its artefacts."""
    from rich.console import Console

    from stl_tune import config as C
    from stl_tune import data
    from stl_tune.train import TrainStatus

    overrides = list(set_ or []) + ([f"data.dir={data_dir}"] if data_dir is not None else [])
    cfg = C.load(config, overrides)
    out = out or Path("runs") / (config.stem if config is not None else "default")
    # The data is checked (every folder image decoded) once, before the first run that trains.
    ready_data = functools.cache(lambda: typer.echo(f"data: {data.prepare(cfg.data, Console())}"))
    if seeds is None:
        if _train_one(cfg, out, ready_data).status == TrainStatus.DIVERGED:
            raise typer.Exit(1)
        return
    _train_seeds(cfg, out, _parse_seeds(seeds), ready_data)


def _parse_seeds(text: str) -> list[int]:
    from stl_tune.errors import UserError

    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--seeds expects a comma list of seeds such as 0,1,2, got {text!r}") from None
    if len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds expects distinct seeds >= 0, got {text!r}")
    return seeds


@dataclasses.dataclass
class _Seen:
    """How far a training got in this process, for its line on a stop."""

    epoch: int = 0  # the last epoch finished (0: none yet)
    saved: int | None = None  # the last epoch checkpointed

    def on_epoch_end(self, m: EpochMetrics) -> None:
        self.epoch = m.epoch
        if m.checkpointed:
            self.saved = m.epoch


def _train_one(cfg: TrainConfig, out: Path, ready_data: Callable[[], None]) -> TrainResult:
    """Train `cfg` into `out` (resuming a run there; a finished one is only shown), write its
    artefacts and say how it went."""
    from stl_tune.outputs import finished_run, write_config, write_outputs
    from stl_tune.progress import EpochProgress
    from stl_tune.stop import Stop
    from stl_tune.train import TrainStatus
    from stl_tune.train import train as run_training

    done = finished_run(out, cfg)
    if done is not None:
        typer.echo(f"{out} holds a finished run: {_scores(done)} (a new --out trains again)")
        return done
    ready_data()
    write_config(out, cfg)
    ckpt = out / "checkpoint.pt"
    # Ctrl-C or SIGTERM: the first lets the epoch under way finish, has it checkpointed
    # (checkpoint_now) and stops the run there (on_epoch_end): the trainer's state is whole only
    # between epochs, and keeping the last finished epoch saved instead would mean a checkpoint
    # write after every epoch (~16 bytes per parameter: 180 MB at width 64). A second stops at once
    # (KeyboardInterrupt): the run then resumes from its last checkpoint.
    stop, seen = Stop(), _Seen()

    def on_epoch_end(m: EpochMetrics) -> bool:
        seen.on_epoch_end(m)
        return stop.requested and m.epoch < cfg.optim.epochs  # at the last epoch the run just finishes

    try:
        with stop, EpochProgress(cfg.optim.epochs, then=on_epoch_end) as bar, stop.interruptible(soft=True):
            stop.on_request = lambda: bar.note("stopping after this epoch, with a checkpoint (Ctrl-C again: at once)")
            result = run_training(cfg, bar.on_epoch_end, checkpoint=ckpt, evaluate_test=True, checkpoint_now=stop)
    except KeyboardInterrupt:
        saved = seen.saved if seen.saved is not None else ("its last checkpoint" if ckpt.exists() else None)
        resume = (
            f"resumes from epoch {saved}"
            if isinstance(saved, int)
            else (f"resumes from {saved}" if saved else "starts over")
        )
        typer.echo(
            f"stopped at once in epoch {seen.epoch + 1} of {cfg.optim.epochs}: the same command (same --out) {resume}"
        )
        raise typer.Exit(STOPPED_EXIT) from None
    if result.status == TrainStatus.STOPPED:
        typer.echo(
            f"stopped at epoch {result.epochs_run} of {cfg.optim.epochs}, saved in {ckpt}: "
            "the same command (same --out) resumes there"
        )
        raise typer.Exit(STOPPED_EXIT)
    paths = write_outputs(out, cfg, result)
    if result.status == TrainStatus.DIVERGED:
        typer.echo(f"diverged: the loss became NaN at epoch {result.diverged_epoch}; see {paths[1]}", err=True)
        return result
    if result.resumed_from_epoch:
        typer.echo(f"resumed from epoch {result.resumed_from_epoch} of {ckpt}")
    typer.echo(f"{_scores(result)} in {result.seconds:.0f} s\nwrote {', '.join(str(p) for p in paths)}")
    return result


def _scores(r: TrainResult) -> str:
    val = "-" if r.best_val_acc is None else f"{r.best_val_acc:.2%}"
    test = "-" if r.test_acc is None else f"{r.test_acc:.2%}"
    return f"{r.status} after {r.epochs_run} epochs: best val {val}, test {test}"


def _train_seeds(cfg: TrainConfig, out: Path, seeds: list[int], ready_data: Callable[[], None]) -> None:
    """`train --seeds`: each seed into out/seed-N/; out/model.pt, the first finished seed's model
    until the ensemble of the finished seeds (two or more) replaces it; out/summary.json. When
    every seed had finished before, the summary is shown as it is."""
    import json

    from stl_tune.outputs import copy_model, write_seed_summary
    from stl_tune.train import TrainStatus

    results: dict[int, TrainResult] = {}
    for seed in seeds:
        typer.echo(f"seed {seed}: {out / f'seed-{seed}'}")
        results[seed] = _train_one(dataclasses.replace(cfg, seed=seed), out / f"seed-{seed}", ready_data)
        if results[seed].status.finished and not (out / "model.pt").exists():
            copy_model(out / f"seed-{seed}" / "model.pt", out / "model.pt")
    trained = any(r.model is not None for r in results.values())  # a finished run read back has none
    summary_file = out / "summary.json"
    old = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    written = trained or old is None or old.get("seeds") != seeds
    if written:
        members = [seed for seed, r in results.items() if r.status.finished]
        dirs = [f"seed-{seed}" for seed in members]
        ensemble = _ensemble(dataclasses.replace(cfg, seed=members[-1]), out, dirs) if len(members) > 1 else None
        s = write_seed_summary(out, results, ensemble)
    else:
        s = old
    if s["finished"]:
        spread = "" if s["test_acc_std"] is None else f" ± {100 * s['test_acc_std']:.1f}"
        typer.echo(f"test accuracy {100 * s['test_acc_mean']:.1f} %{spread} over {s['finished']} seeds")
    if s["ensemble"] is not None:
        e = s["ensemble"]
        typer.echo(
            f"ensemble of {len(e['members'])} seeds ({out / e['file']}, also {out / 'model.pt'}): "
            f"test accuracy {100 * e['test_acc']:.1f} %"
        )
    diverged = [seed for seed, r in results.items() if r.status == TrainStatus.DIVERGED]
    typer.echo(
        f"{'wrote' if written else 'summary in'} {summary_file}"
        + (f"; diverged: seeds {', '.join(map(str, diverged))}" if diverged else "")
    )
    if diverged:
        raise typer.Exit(1)


def _ensemble(cfg: TrainConfig, out: Path, members: list[str], weights: list[float] | None = None) -> dict:
    """out/ensemble.pt of the models in the folders `members` of `out` (their softmax averaged,
    weighted by `weights`, None: equally; flip TTA as for one model), scored on the test split of
    cfg.data; out/model.pt becomes a copy of it. The summary's "ensemble" entry. `train --seeds`
    and `stl-tune ensemble` (cli/ensemble.py) write theirs with it."""
    from stl_tune import data
    from stl_tune.evaluate import score
    from stl_tune.outputs import copy_model, load_model, save_ensemble
    from stl_tune.train import resolve_device

    path = out / "ensemble.pt"
    save_ensemble(path, [out / m / "model.pt" for m in members], weights)
    device = resolve_device(cfg.runtime.device)
    model = load_model(path, device)
    ds = data.load_data(cfg.data, cfg.seed, device, with_test=True)  # the last run's split: cached in this process
    s = score(model, ds.test_x, ds.test_y.cpu(), device)
    copy_model(path, out / "model.pt")
    return {
        "file": path.name,
        "members": list(members),
        **({"weights": model.weights} if weights is not None else {}),
        "test_acc": s.accuracy,
        "per_class_acc": s.per_class_acc,
        "confusion": s.confusion,
        "classes": list(model.classes),
    }


@app.command()
def evaluate(
    model: Annotated[
        Path, typer.Option(help="A model file written by `stl-tune train` (OUT/model.pt, or OUT/ensemble.pt).")
    ],
    data_dir: Annotated[
        Path,
        typer.Option(help="Folder dataset: split layout (test/ is scored) or class layout (every image is scored)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Folder for metrics.json and confusion.png.",
            show_default="beside the model: eval-<data dir name>/",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Score a trained model on a folder dataset, without training: accuracy, per-class accuracy, confusion matrix."""
    from rich.console import Console
    from rich.table import Table

    from stl_tune.evaluate import evaluate as run_evaluation
    from stl_tune.evaluate import write_evaluation

    console = Console()
    ev = run_evaluation(model, data_dir, device, progress=console)
    paths = write_evaluation(out or model.parent / f"eval-{data_dir.resolve().name}", ev)
    table = Table("class", "images", "correct", "accuracy", title=f"{ev.model} on {ev.data_dir}")
    for i, (name, row, acc) in enumerate(zip(ev.classes, ev.confusion, ev.per_class_acc)):
        if acc is not None:
            table.add_row(name, str(sum(row)), str(row[i]), f"{acc:.1%}")
    console.print(table)
    if ev.missing:
        lacks = ", ".join(ev.missing[:5]) + (f" and {len(ev.missing) - 5} more" if len(ev.missing) > 5 else "")
        typer.echo(
            f"the folder holds {len(ev.classes) - len(ev.missing)} of the model's {len(ev.classes)} classes: "
            f"scored those (none of {lacks}; an image predicted as one of these counts as wrong)"
        )
    typer.echo(f"scored {ev.scored}{', flip TTA' if ev.tta else ''}: accuracy {ev.accuracy:.2%}")
    typer.echo(f"wrote {', '.join(str(p) for p in paths)}")


@app.command()
def predict(
    model: Annotated[
        Path, typer.Option(help="A model file written by `stl-tune train` (OUT/model.pt, or OUT/ensemble.pt).")
    ],
    images: Annotated[
        list[Path],
        typer.Option(help="A folder (searched recursively) or image files; a shell glob works: --images photos/*.jpg."),
    ],
    more: Annotated[
        list[Path] | None, typer.Argument(hidden=True, help="The rest of a shell glob after --images.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="CSV: file, class, probability, then the next classes.")
    ] = Path("predictions.csv"),
    top_k: Annotated[int, typer.Option(min=1, help="Classes per image in the CSV, most probable first.")] = 3,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Classify unlabelled images with a trained model (decoded and flip-TTA'd as `evaluate` does)."""
    from rich.console import Console
    from rich.table import Table

    from stl_tune.data import skipped_note
    from stl_tune.predict import predict_images, write_csv

    console = Console()
    p = predict_images(model, [*images, *(more or [])], top_k, device, progress=console)
    write_csv(output, p)
    shown = 10  # rows in the terminal; the CSV has them all
    table = Table(
        "file",
        "class",
        "probability",
        title=None if len(p.files) <= shown else f"the first {shown} of {len(p.files):,}",
    )
    for file, classes, probs in list(zip(p.files, p.classes, p.probabilities))[:shown]:
        table.add_row(str(file), classes[0], f"{probs[0]:.1%}")
    console.print(table)
    skipped = f"; {skipped_note(p.skipped)}" if p.skipped else ""
    typer.echo(f"classified {len(p.files):,} images{', flip TTA' if p.tta else ''}{skipped}: wrote {output}")


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
