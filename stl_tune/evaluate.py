"""`stl-tune evaluate`: score a trained model file (model.pt, or an ensemble.pt) on a folder
dataset, without training.

Which images are scored depends on the folder's layout (stl_tune/data/folders.py):
  split layout  root/train/<class>/, root/test/<class>/ (root/val/ optional): test/ only.
  class layout  root/<class>/: every image. The folder is taken as a new dataset; stl-tune train's
                fixed test share (data.test_fraction) is not drawn, so scoring the folder a model was
                trained on counts its training images too (its metrics.json has the test-split scores).
The folder's class names must be among the model's; they are matched by name (case included: a
name that differs only in case is pointed out), so the order of the sub-folders does not matter.
A folder holding some of the model's classes scores those: an image predicted as a class the
folder lacks counts as wrong. Images are decoded as for training (data.decode_folder: the same
decoding and decode cache), resized to the model's image size and scored in batches on the model's
device by the trainer's own predict() (flip TTA when the model's config has eval.tta).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import Tensor, nn

from stl_tune import data
from stl_tune.data import DataError
from stl_tune.outputs import load_model
from stl_tune.train import accuracy, confusion_matrix, per_class_accuracy, predict, resolve_device


@dataclass
class Evaluation:
    model: str  # the model file
    data_dir: str
    layout: str  # "split" | "class"
    scored: str  # which images, in words (see the module docstring)
    images: int
    accuracy: float  # in [0, 1]
    tta: bool  # logits of each image and its mirror averaged
    classes: list[str]  # the model's, in its logit order
    per_class_acc: list[float | None]  # recall of each true class; None for a class the folder lacks
    confusion: list[list[int]]  # rows: true class, columns: predicted; the model's class order
    missing: list[str]  # the model's classes that the folder has no images of (not scored)


@dataclass
class Scores:
    accuracy: float  # in [0, 1]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    per_class_acc: list[float]  # recall of each true class (0 for a class with no images)


def score(model: nn.Module, x: Tensor, y: Tensor, device: torch.device) -> Scores:
    """Accuracy, confusion matrix and per-class accuracy of a loaded model (load_model) on uint8
    images `x` with labels `y` in the model's class order."""
    pred = predict(model, x.to(device), model.config, device).cpu()
    cm = confusion_matrix(pred, y, len(model.classes))
    return Scores(accuracy(pred, y), cm.tolist(), per_class_accuracy(cm))


def folder_images(
    root: str | Path, image_size: int, progress: Console | None = None
) -> tuple[Tensor, Tensor, tuple[str, ...], str, str]:
    """The images to score in a folder dataset: uint8 [N,3,S,S], int64 labels, class names (sorted
    folder names), the layout ("split" | "class") and which images, in words."""
    if (Path(root) / data.stl10.STL10.base_folder).is_dir():  # else "needs at least 2 class sub-folders, found 1"
        raise DataError(
            f"{root} holds STL-10's binaries, not a folder dataset ({root}/<class>/ or {root}/test/<class>/): "
            "a model's STL-10 test accuracy is in the metrics.json or summary.json that train and ensemble wrote"
        )
    # stl_tune.data's own layout detection and reader: a folder means here what it means to `train`
    splits = data.folder_splits(root)
    x, y, classes = data.decode_folder(splits.get("all") or splits["test"], image_size, progress)
    if "all" in splits:
        return x, y, classes, "class", f"all {len(y):,} images (class layout <class>/: the whole folder as new data)"
    return x, y, classes, "split", f"the {len(y):,} images of test/ (split layout: train/ and val/ are not scored)"


def _unknown_classes(data_dir: str | Path, unknown: list[str], model_classes: list[str]) -> DataError:
    """The error for folder classes the model does not know, with the model's names that differ only in case."""
    by_case = {c.casefold(): c for c in model_classes}
    renames = [f"{u!r} to {by_case[u.casefold()]!r}" for u in unknown if u.casefold() in by_case]
    hint = f"; names must match exactly, case included: rename {', '.join(renames)}" if renames else ""
    return DataError(
        f"{data_dir}: class folders the model does not know: {', '.join(map(repr, unknown))}{hint} "
        f"(the model's {len(model_classes)} classes: {', '.join(model_classes)})"
    )


def evaluate(
    model_path: str | Path, data_dir: str | Path, device: str | torch.device = "cpu", progress: Console | None = None
) -> Evaluation:
    """Score the model file on every image to score in `data_dir`, on `device` (auto | cpu | cuda[:N]);
    a UserError for a file that is not a model, a DataError when a folder class is not the model's."""
    device = resolve_device(str(device))
    model = load_model(model_path, device)
    x, y, folder_classes, layout, scored = folder_images(data_dir, model.config.data.image_size, progress)
    unknown = sorted(set(folder_classes) - set(model.classes))
    if unknown:
        raise _unknown_classes(data_dir, unknown, model.classes)
    y = torch.tensor([model.classes.index(c) for c in folder_classes])[y]  # folder label -> model's logit
    s = score(model, x, y, device)
    present = set(folder_classes)
    return Evaluation(
        model=str(model_path),
        data_dir=str(data_dir),
        layout=layout,
        scored=scored,
        images=len(y),
        accuracy=s.accuracy,
        tta=model.config.eval.tta,
        classes=list(model.classes),
        per_class_acc=[a if c in present else None for c, a in zip(model.classes, s.per_class_acc)],
        confusion=s.confusion,
        missing=[c for c in model.classes if c not in present],
    )


def write_evaluation(out: Path, ev: Evaluation) -> list[Path]:
    """out/metrics.json (the Evaluation) and out/confusion.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "metrics.json", out / "confusion.png"]
    paths[0].write_text(json.dumps(asdict(ev), indent=2))
    plot_confusion(ev.confusion, ev.classes, paths[1], title=f"{ev.accuracy:.1%} of {ev.images:,} images")
    return paths


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> None:
    """The confusion matrix as a heat map: colour = share of the true class (so rare classes show
    as clearly as common ones), the count written in each cell, class names on both axes.
    Drawn here with matplotlib, which the project already uses: scikit-learn's
    ConfusionMatrixDisplay does the same with matplotlib but would add a dependency for one plot."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    cm = np.array(confusion)
    share = cm / cm.sum(1, keepdims=True).clip(min=1)
    n = len(classes)
    side = max(5.0, 0.5 * n + 3)  # inches: room for the names at any class count
    fig, ax = plt.subplots(figsize=(side + 1, side), layout="constrained")  # room for long names
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 40:  # beyond that the numbers no longer fit their cells
        for i, j in np.ndindex(n, n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if share[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
