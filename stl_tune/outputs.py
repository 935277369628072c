"""What `stl-tune train` leaves in its output folder: config, metrics, the model file and curves;
whether a folder already holds a finished run (of the same config); the model file's format
(save_model / save_ensemble / load_model); and the summary of a run over several seeds."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stl_tune import config as C
from stl_tune.errors import UserError
from stl_tune.files import atomic_write
from stl_tune.model import build_model
from stl_tune.train import TrainResult, TrainStatus, place_model, recipe_of, resolve_device


def write_config(out: Path, cfg: C.TrainConfig) -> Path:
    """out/config.yaml, the resolved config; written when a run starts, so that a later command
    in the same folder can tell whether it asks for the same run (finished_run)."""
    path = out / "config.yaml"
    C.dump(cfg, path, header="# resolved config of this run: stl-tune train --config config.yaml\n")
    return path


def write_outputs(out: Path, cfg: C.TrainConfig, result: TrainResult) -> list[Path]:
    """config.yaml (resolved), metrics.json, model.pt (final EMA weights), curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_config(out, cfg), out / "metrics.json", out / "curves.png"]
    paths[1].write_text(json.dumps(result.to_json(), indent=2))
    plot_curves(result.history, paths[2], result.test_acc)
    if result.model is not None and result.status != TrainStatus.DIVERGED:
        paths.append(out / "model.pt")
        save_model(paths[-1], cfg, result.classes, result.model)
    return paths


def finished_run(out: Path, cfg: C.TrainConfig) -> TrainResult | None:
    """The result (read from metrics.json, without its model) of the finished run of `cfg` in
    `out`, or None when `out` holds none yet; a UserError when `out` holds a run of another config
    (its config.yaml), which a new --out keeps apart. Where data and device are (data.dir,
    runtime.*) do not count, as for resuming a checkpoint."""
    saved = out / "config.yaml"
    if saved.is_file():
        try:
            changes = _changes(C.load(saved), cfg)
        except C.ConfigError as e:  # written by another version of stl-tune
            raise UserError(f"{out} holds a run whose config no longer loads ({e}); use a new --out") from None
        if changes:
            more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
            raise UserError(
                f"{out} holds a run of another config ({'; '.join(changes[:3])}{more}): use a new --out for this one"
            )
    try:
        result = TrainResult(**json.loads((out / "metrics.json").read_text()))
    except (OSError, ValueError, TypeError):  # none yet, or unreadable: the run is not finished
        return None
    return result if result.status.finished else None


def _changes(old: C.TrainConfig, new: C.TrainConfig) -> list[str]:
    """'key: old -> new' for each recipe value (train.recipe_of) that differs."""
    a, b = (C.flatten(recipe_of(C.to_dict(c))) for c in (old, new))
    return [f"{k}: {a.get(k)!r} -> {v!r}" for k, v in b.items() if a.get(k) != v]


def copy_model(src: Path, dst: Path) -> None:
    """dst becomes a copy of the model file src, atomically: a reader sees the old or the new one."""
    with open(src, "rb") as source, atomic_write(dst) as f:
        shutil.copyfileobj(source, f)


# ------------------------------------------------------------------------------ the model file
MODEL_FORMAT = "stl-tune model"  # marks a model file apart from a resume checkpoint or other .pt
# Raise when the keys below change; load_model reads the versions in MODEL_VERSIONS and refuses
# others. Version 1: one network, {config, classes, state_dict}. Version 2 adds "kind": "model"
# (as version 1) or "ensemble", {members: [{config, classes, state_dict}, ...]}. Version 3 adds
# each member's "weight" (an ensemble of version 2: equal weights); an older stl-tune, which would
# average the members equally, refuses it.
MODEL_VERSION = 3
MODEL_VERSIONS = (1, 2, 3)


def save_model(path: Path, cfg: C.TrainConfig, classes: list[str], model: nn.Module) -> None:
    """The trained network alone: its weights (with the input mean/std, which are buffers of the
    model) and what rebuilds it, the resolved config and the class names, all tensors and plain
    values, so torch.load(path, weights_only=True) reads it."""
    torch.save(
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "kind": "model",
            "config": C.to_dict(cfg),
            "classes": list(classes),
            "state_dict": model.state_dict(),
        },
        path,
    )


def save_ensemble(path: Path, members: list[Path], weights: list[float] | None = None) -> None:
    """One model file (kind "ensemble") holding the networks of several model files with the same
    classes, e.g. the seeds of `train --seeds`, each with its weight in the average (`weights`,
    positive, normalised to sum to 1; None: equal); load_model returns it as an Ensemble."""
    saved = [_read(m) for m in members]
    if any(s.get("kind", "model") != "model" for s in saved):
        raise UserError("an ensemble is made of single models, not of ensembles")
    if any(s["classes"] != saved[0]["classes"] for s in saved):
        raise UserError(f"the models of an ensemble must have the same classes: {', '.join(map(str, members))} differ")
    weights = [1.0] * len(saved) if weights is None else list(weights)
    if len(weights) != len(saved) or min(weights) <= 0:
        raise UserError(f"an ensemble needs one positive weight per member, got {weights} for {len(saved)}")
    torch.save(
        {
            "format": MODEL_FORMAT,
            "version": MODEL_VERSION,
            "kind": "ensemble",
            "members": [
                {**{k: s[k] for k in ("config", "classes", "state_dict")}, "weight": w / sum(weights)}
                for s, w in zip(saved, weights)
            ],
        },
        path,
    )


class Ensemble(nn.Module):
    """Several trained networks as one: forward returns the log of their softmax probabilities
    averaged (weighted by `weights`, which sum to 1; None: equal), so argmax and softmax of its
    output are the ensemble's class and probabilities, and the trainer's predict() (flip TTA)
    serves it as it serves one network."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = [1 / len(members)] * len(members) if weights is None else list(weights)

    def forward(self, x: Tensor) -> Tensor:
        log_p = torch.stack(
            [F.log_softmax(m(x).float(), dim=1) + math.log(w) for m, w in zip(self.members, self.weights)]
        )
        return torch.logsumexp(log_p, dim=0)


def _read(path: str | Path) -> dict:
    """A model file's saved dict, checked to be one this stl-tune reads; else a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not written by torch.save, truncated, or holding arbitrary objects
        raise UserError(
            f"{path} is not an stl-tune model file ({type(e).__name__}); `stl-tune train` writes one as model.pt"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        hint = (
            " (a resume checkpoint: use the model.pt beside it)" if isinstance(saved, dict) and "ema" in saved else ""
        )
        raise UserError(f"{path} is not an stl-tune model file{hint}; `stl-tune train` writes one as model.pt")
    if saved.get("version") not in MODEL_VERSIONS:
        raise UserError(
            f"{path} is an stl-tune model file of format version {saved.get('version')}; "
            f"this stl-tune reads versions {', '.join(map(str, MODEL_VERSIONS))}"
        )
    return saved


def _network(path: Path, saved: dict) -> nn.Module:
    """One saved network rebuilt on the CPU, with .classes and .config."""
    try:
        cfg = C.from_dict(saved["config"])
        state = saved["state_dict"]
        # the input statistics are buffers in the weights: build with them, then load the rest
        model = build_model(
            cfg.model, len(saved["classes"]), state["mean"].flatten().tolist(), state["std"].flatten().tolist()
        )
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, UserError):  # other keys or shapes than this model's
        raise UserError(f"{path} was written by another version of stl-tune: its weights do not fit") from None
    model.classes, model.config = list(saved["classes"]), cfg
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network of a model file written by `stl-tune train` (model.pt, or ensemble.pt: an
    Ensemble of networks), rebuilt, on `device`, in eval mode.

    It takes float images in [0, 1], (N, 3, S, S) with S = .config.data.image_size, and returns
    logits (an Ensemble: the log of its members' averaged probabilities, weighted by .weights); two attributes come with
    it: .classes (list[str], the class of each logit) and .config (the TrainConfig it was trained
    with, e.g. .config.eval.tta; an Ensemble's is its first member's). Any other file is a UserError.
    """
    path = Path(path)
    saved = _read(path)
    if saved.get("kind", "model") == "ensemble":
        entries = saved.get("members") or [{}]
        members = [_network(path, m) for m in entries]
        weights = [m.get("weight", 1 / len(entries)) for m in entries]  # version 2: equal
        model = Ensemble(members, weights)
        model.classes, model.config = members[0].classes, members[0].config
    else:
        model = _network(path, saved)
    return place_model(model, model.config, resolve_device(str(device))).eval()  # as the trainer places it


# --------------------------------------------------------------------------------- several seeds
def write_seed_summary(out: Path, results: dict[int, TrainResult], ensemble: dict | None = None) -> dict:
    """out/summary.json of `train --seeds` (write_summary): each seed's run, and `ensemble`, the
    scores of the seeds' ensemble (see cli/train.py), or None."""
    return write_summary(
        out, [run_entry(seed, f"seed-{seed}", r) for seed, r in results.items()], ensemble, seeds=list(results)
    )


def run_entry(seed: int, folder: str, r: TrainResult) -> dict:
    """A run in summary.json: its seed, folder (under the summary's), status and accuracies."""
    return {
        "seed": seed,
        "dir": folder,
        "status": r.status,
        "test_acc": r.test_acc,
        "best_val_acc": r.best_val_acc,
        "epochs_run": r.epochs_run,
    }


def write_summary(out: Path, runs: list[dict], ensemble: dict | None, **head) -> dict:
    """out/summary.json: `head`; the runs (run_entry, maybe with more keys); the mean and sample
    standard deviation (n - 1) of the test accuracy over the runs that have one (std None for fewer
    than two); `ensemble`, the scores of their ensemble, or None."""
    accs = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    summary = {
        **head,
        "runs": runs,
        "finished": len(accs),
        "test_acc_mean": statistics.fmean(accs) if accs else None,
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "ensemble": ensemble,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def plot_curves(history: list[dict], path: Path, test_acc: float | None = None) -> None:
    """Loss, validation accuracy (and the final test accuracy), learning rate and label smoothing
    per epoch."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train loss")
    axes[0].set(title="loss", xlabel="epoch")
    acc = [(h["epoch"], h["val_acc"]) for h in history if h["val_acc"] is not None]
    if acc:
        axes[1].plot(*zip(*acc), color="tab:green", label="validation (EMA, TTA)")
        best = max(acc, key=lambda p: p[1])
        axes[1].annotate(f"best {best[1]:.2%} @ {best[0]}", best, textcoords="offset points", xytext=(-60, -20))
    else:
        axes[1].text(0.5, 0.6, "no validation split\n(trained on train+val)", ha="center", transform=axes[1].transAxes)
    if test_acc is not None:
        axes[1].axhline(test_acc, color="tab:purple", linestyle="--", label=f"test (final) {test_acc:.2%}")
    axes[1].set(title="accuracy", xlabel="epoch", xlim=axes[0].get_xlim())
    axes[2].plot(epochs, [h["lr"] for h in history], label="learning rate")
    axes[2].set(title="schedules", xlabel="epoch", ylabel="learning rate")
    twin = axes[2].twinx()
    twin.plot(epochs, [h["label_smoothing"] for h in history], color="tab:red", label="label smoothing")
    twin.set_ylabel("label smoothing")
    for ax in (*axes, twin):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
