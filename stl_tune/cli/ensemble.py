"""`stl-tune ensemble`: the final model as an ensemble of a search's trials, chosen by greedy
selection on their validation predictions (search/worker/ensemble.py), in the output layout of
`train --seeds`: a folder per member, ensemble.pt (weighted), model.pt (a copy of it) and
summary.json, which `report --runs`, `evaluate` and `predict` take."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stl_tune.cli.options import Artifacts, DataDir, NameOpt, StorageOpt

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from stl_tune.config import TrainConfig
    from stl_tune.search.worker.keep import Kept
    from stl_tune.train import TrainResult

app = typer.Typer(no_args_is_help=True)
MEMBERS = 5  # at most this many distinct trials by default: a handful


@app.command()
def ensemble(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            help="Output folder: trial-N/ per member, ensemble.pt, model.pt, summary.json.",
        ),
    ],
    name: NameOpt = None,
    storage: StorageOpt = None,
    members: Annotated[int, typer.Option(min=1, help="Distinct trials in the ensemble, at most.")] = MEMBERS,
    retrain: Annotated[
        bool,
        typer.Option(
            "--retrain/--trial-models",
            help="Retrain each member's config on train+validation (`train` once per member, resumable) "
            "instead of ensembling the search's own trial models.",
        ),
    ] = False,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
) -> None:
    """Ensemble a search's best trials (greedy selection with replacement on their validation
    predictions) and score it on the test split; the final model, like `train --config`."""
    from rich.console import Console
    from rich.table import Table

    from stl_tune import config as C
    from stl_tune import data
    from stl_tune.cli.train import _ensemble, _train_one  # the seeds' ensemble and one resumable training
    from stl_tune.outputs import run_entry, write_summary
    from stl_tune.search import load_study, open_storage, record, storage_url
    from stl_tune.search.state.export import final_config
    from stl_tune.search.worker import keep
    from stl_tune.search.worker.ensemble import select
    from stl_tune.search.worker.session import artifacts_dir

    url = storage_url(storage)
    study, spec = load_study(name, open_storage(url, heartbeat=False, create=False))
    folder = artifacts_dir(artifacts, url, study)
    sel = select(keep.kept(study, folder), members, need_models=not retrain)
    console = Console()
    table = Table("member", spec.objective, "weight", title=f"Ensemble of study '{study.study_name}'")
    for k, w in sel.members:
        table.add_row(f"trial {k.trial.number}", f"{k.trial.value:.4f}", f"{w:.2f}")
    console.print(table)
    left_out = [
        f"{n} {why}"
        for n, why in (
            (sel.other_split, "of another validation split or image size"),
            (sel.without_model, "without a kept model"),
        )
        if n
    ]
    left_out_note = f" ({', '.join(left_out)} left out)" if left_out else ""
    typer.echo(
        f"chosen from {sel.candidates} completed trials on {sel.split}{left_out_note}: validation accuracy "
        f"{sel.val_acc:.2%} (the best single trial model's: {sel.best_single_val_acc:.2%})"
    )

    def member_config(trial: FrozenTrial) -> TrainConfig:
        cfg = final_config(trial) if retrain else C.from_dict(trial.user_attrs[record.CONFIG_ATTR])
        if data_dir is not None:
            cfg.data.dir = str(data_dir)
        return cfg

    configs = [member_config(k.trial) for k, _ in sel.members]
    prepare = functools.cache(lambda: typer.echo(f"data: {data.prepare(configs[0].data, Console())}"))
    runs, dirs = [], []
    for (k, weight), cfg in zip(sel.members, configs):
        folder = f"trial-{k.trial.number}"
        if retrain:
            typer.echo(f"trial {k.trial.number}: {out / folder}")
            result = _train_one(cfg, out / folder, prepare)
        else:
            prepare()
            result = _trial_model(k, cfg, out / folder)
        runs.append(run_entry(cfg.seed, folder, result) | {"trial": k.trial.number, "weight": weight})
        if result.status.finished:  # else diverged: no model
            dirs.append(folder)
    if not dirs:
        raise typer.Exit(1)
    e = _ensemble(configs[-1], out, dirs, [r["weight"] for r in runs if r["dir"] in dirs])
    e["selection_val_acc"] = sel.val_acc  # the trial models' weighted average on the search's validation split
    source = "configs retrained on train+validation" if retrain else "the search's trial models"
    write_summary(out, runs, e, study=study.study_name, source=source)
    typer.echo(
        f"ensemble of {len(dirs)} ({source}; {out / e['file']}, also {out / 'model.pt'}): "
        f"test accuracy {100 * e['test_acc']:.1f} %\nwrote {out / 'summary.json'}"
    )
    if len(dirs) < len(runs):
        typer.echo(f"diverged: trials {', '.join(str(r['trial']) for r in runs if r['dir'] not in dirs)}", err=True)
        raise typer.Exit(1)


def _trial_model(k: Kept, cfg: TrainConfig, out: Path) -> TrainResult:
    """A kept trial model (search/worker/keep.py) as out/model.pt, scored on the test split; what the
    trial recorded, as a TrainResult."""
    from stl_tune import data
    from stl_tune.evaluate import score
    from stl_tune.outputs import copy_model, load_model
    from stl_tune.search import record
    from stl_tune.train import TrainResult, resolve_device

    out.mkdir(parents=True, exist_ok=True)
    copy_model(k.model, out / "model.pt")
    device = resolve_device(cfg.runtime.device)
    ds = data.load_data(cfg.data, cfg.seed, device, with_test=True)
    t = k.trial
    return TrainResult(
        status=t.user_attrs.get(record.STATUS_ATTR),
        epochs_run=t.user_attrs.get(record.EPOCHS_RUN_ATTR),
        best_val_acc=max(record.curve(t), default=None),
        val_acc=None,
        test_acc=score(load_model(out / "model.pt", device), ds.test_x, ds.test_y.cpu(), device).accuracy,
    )
