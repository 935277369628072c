"""What `stl-tune train` leaves in its output folder: config, metrics, the model file and curves;
the model file's format (save_model / load_model); and the summary of a run over several seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from torch import nn

from stl_tune import config as C
from stl_tune.errors import UserError
from stl_tune.model import ResNet, build_model
from stl_tune.train import TrainResult, place_model, resolve_device


def write_outputs(out: Path, cfg: C.TrainConfig, result: TrainResult) -> list[Path]:
    """config.yaml (resolved), metrics.json, model.pt (final EMA weights), curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "config.yaml", out / "metrics.json", out / "curves.png"]
    C.dump(cfg, paths[0], header="# resolved config of this run: stl-tune train --config config.yaml\n")
    paths[1].write_text(json.dumps(result.to_json(), indent=2))
    plot_curves(result.history, paths[2], result.test_acc)
    if result.model is not None and result.status != "diverged":
        paths.append(out / "model.pt")
        save_model(paths[-1], cfg, result.classes, result.model)
    return paths


# ------------------------------------------------------------------------------ the model file
MODEL_FORMAT = "stl-tune model"  # marks a model file apart from a resume checkpoint or other .pt
MODEL_VERSION = 1  # raise when the keys below change; load_model refuses other versions


def save_model(path: Path, cfg: C.TrainConfig, classes: list[str], model: nn.Module) -> None:
    """The trained network alone: its weights (with the input mean/std, which are buffers of the
    model) and what rebuilds it, the resolved config and the class names, all tensors and plain
    values, so torch.load(path, weights_only=True) reads it."""
    torch.save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": C.to_dict(cfg),
                "classes": list(classes), "state_dict": model.state_dict()}, path)  # fmt: skip


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ResNet:
    """The network of a model.pt written by `stl-tune train`, rebuilt, on `device`, in eval mode.

    It takes float images in [0, 1], (N, 3, S, S) with S = .config.data.image_size, and returns
    logits; two attributes come with it: .classes (list[str], the class of each logit) and .config
    (the TrainConfig it was trained with, e.g. .config.eval.tta). Any other file is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not written by torch.save, truncated, or holding arbitrary objects
        raise UserError(f"{path} is not an stl-tune model file ({type(e).__name__}); "
                        "`stl-tune train` writes one as model.pt") from None  # fmt: skip
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        hint = " (a resume checkpoint: use the model.pt beside it)" if isinstance(saved, dict) and "ema" in saved else ""
        raise UserError(f"{path} is not an stl-tune model file{hint}; `stl-tune train` writes one as model.pt")
    if saved.get("version") != MODEL_VERSION:
        raise UserError(f"{path} is an stl-tune model file of format version {saved.get('version')}; "
                        f"this stl-tune reads version {MODEL_VERSION}")  # fmt: skip
    try:
        cfg = C.from_dict(saved["config"])
        state = saved["state_dict"]
        # the input statistics are buffers in the weights: build with them, then load the rest
        model = build_model(cfg.model, len(saved["classes"]), state["mean"].flatten().tolist(), state["std"].flatten().tolist())
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, UserError):  # other keys or shapes than this model's
        raise UserError(f"{path} was written by another version of stl-tune: its weights do not fit") from None
    device = resolve_device(str(device))
    model = place_model(model, cfg, device).eval()  # as the trainer places it
    model.classes, model.config = list(saved["classes"]), cfg
    return model


# --------------------------------------------------------------------------------- several seeds
def write_seed_summary(out: Path, results: dict[int, TrainResult]) -> dict:
    """out/summary.json: each seed's status, folder and accuracies, and the mean and sample
    standard deviation (n - 1) of the test accuracy over the seeds that finished (std None for
    fewer than two)."""
    runs = [{"seed": seed, "dir": f"seed-{seed}", "status": r.status, "test_acc": r.test_acc,
             "best_val_acc": r.best_val_acc, "epochs_run": r.epochs_run} for seed, r in results.items()]  # fmt: skip
    accs = [r["test_acc"] for r in runs if r["test_acc"] is not None]
    summary = {
        "seeds": list(results), "runs": runs, "finished": len(accs),
        "test_acc_mean": statistics.fmean(accs) if accs else None,
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else None,
    }  # fmt: skip
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
