"""`stl-tune predict`: classify unlabelled images with a model file (model.pt, or an ensemble.pt).

Images are decoded as for training (data.read_images: the same decoding, resized to the model's
image size) and scored by the trainer's own predict_logits (flip TTA when the model's config has
eval.tta), so a picture gets the class `evaluate` would score it as. A folder is searched
recursively for files whose extension PIL opens (data.image_suffixes); its other files are skipped
and counted. A file named on its own must be an image.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from stl_tune import data
from stl_tune.data import DataError
from stl_tune.outputs import load_model
from stl_tune.progress import image_progress
from stl_tune.train import predict_logits, resolve_device


@dataclass
class Predictions:
    files: list[Path]  # in the order given (a folder's files sorted by path)
    classes: list[list[str]]  # per file, its top-k classes, most probable first
    probabilities: list[list[float]]  # per file, the probabilities of those classes, in [0, 1]
    skipped: list[Path]  # files in the folders given that are not images
    tta: bool


def image_files(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(images, skipped): the files named, and every image under the folders named (sorted, hidden
    entries left out); a DataError for a missing path or a named file that is not an image."""
    images: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            images += [f for f in found if f.suffix.lower() in data.image_suffixes()]
            skipped += [f for f in found if f.suffix.lower() not in data.image_suffixes()]
        elif p.is_file():
            if p.suffix.lower() not in data.image_suffixes():
                raise DataError(
                    f"{p}: not an image file (PIL reads .png, .jpg, .tif, .webp, .bmp and more, "
                    f"not {p.suffix or 'files without an extension'})"
                )
            images.append(p)
        else:
            raise DataError(f"not found: {p}")
    if not images:
        raise DataError(f"no image files in {', '.join(map(str, paths))}")
    return images, skipped


def predict_images(
    model_path: str | Path, paths: list[Path], top_k: int = 3, device: str = "auto", progress: Console | None = None
) -> Predictions:
    """Classify every image of `paths` (files and folders) with the model file; top_k classes per
    image (at most the model's number of classes)."""
    device = resolve_device(device)
    model = load_model(model_path, device)
    files, skipped = image_files(paths)
    with image_progress(len(files) if progress else 0, "decoding images", progress) as advance:
        x = data.read_images(files, model.config.data.image_size, advance)
    probs = torch.softmax(predict_logits(model, x.to(device), model.config, device), dim=1).cpu()
    top = probs.topk(min(top_k, len(model.classes)), dim=1)
    return Predictions(
        files=files,
        classes=[[model.classes[i] for i in row] for row in top.indices.tolist()],
        probabilities=top.values.tolist(),
        skipped=skipped,
        tta=model.config.eval.tta,
    )


def write_csv(path: Path, p: Predictions) -> None:
    """One row per image: file, class, probability, then class_2, probability_2, ... to top-k."""
    k = len(p.classes[0])
    header = ["file", "class", "probability"] + [f"{c}_{i}" for i in range(2, k + 1) for c in ("class", "probability")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for file, classes, probs in zip(p.files, p.classes, p.probabilities):
            w.writerow([str(file)] + [v for c, q in zip(classes, probs) for v in (c, f"{q:.4f}")])
