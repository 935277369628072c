"""What `stl-tune train` leaves in its output folder: config, metrics, weights and curves."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from stl_tune import config as C
from stl_tune.train import TrainResult


def write_outputs(out: Path, cfg: C.TrainConfig, result: TrainResult) -> list[Path]:
    """config.yaml (resolved), metrics.json, model.pt (final EMA weights), curves.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "config.yaml", out / "metrics.json", out / "curves.png"]
    C.dump(cfg, paths[0], header="# resolved config of this run: stl-tune train --config config.yaml\n")
    paths[1].write_text(json.dumps(result.to_json(), indent=2))
    plot_curves(result.history, paths[2], result.test_acc)
    if result.model is not None and result.status != "diverged":
        paths.append(out / "model.pt")
        torch.save({"config": C.to_dict(cfg), "classes": result.classes, "state_dict": result.model.state_dict()}, paths[-1])
    return paths


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
