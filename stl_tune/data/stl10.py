"""STL-10's binaries: the reader (sizes and labels checked), the writer (its inverse, for fake
data), and the downloader. Only the labelled splits are used; unlabeled_X.bin never is."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import STL10
from torchvision.datasets.utils import download_and_extract_archive

from stl_tune.errors import DataError

# Layout (https://cs.stanford.edu/~acoates/stl10/): X files are raw uint8, 3*96*96 bytes per image,
# each channel stored column-major (all of column 0, then column 1, ...); y files are one uint8 per
# image, labels 1..10. Only the labelled splits are used; unlabeled_X.bin (100,000 images) never is.
STL10_SIDE = 96  # pixels per side
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
STL10_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin")}
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def read_stl10_split(root: Path, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images [N,3,96,96] (row-major, as torch expects) and int64 labels 0..9 of one split.

    `root` holds `stl10_binary/` (torchvision's convention, and what data.dir names). Sizes and labels
    are checked, so a truncated download is an error naming the file, never a silently wrong reshape.
    """
    y = checked_labels(Path(root), split)
    x = np.fromfile(Path(root) / STL10.base_folder / STL10_FILES[split][0], dtype=np.uint8)
    # [N, C, W, H] in file order -> swap the pixel axes; contiguous so later slicing stays cheap.
    images = torch.from_numpy(x).view(len(y), 3, STL10_SIDE, STL10_SIDE).transpose(2, 3).contiguous()
    return images, y


def checked_labels(root: Path, split: str) -> Tensor:
    """The labels of one split, once its X file's size says it holds exactly one image per label
    (a stat, no read: prepare() checks every split this way before any training)."""
    x_path, y_path = (root / STL10.base_folder / name for name in STL10_FILES[split])
    y = read_labels(root, split)
    size = x_path.stat().st_size if x_path.is_file() else 0
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise DataError(
            f"{x_path}: {size} bytes is not a whole number of {STL10_IMAGE_BYTES}-byte 3x96x96 "
            "images; the file is missing, truncated or not STL-10 (delete it to download it again)"
        )
    n = size // STL10_IMAGE_BYTES
    if len(y) != n:
        raise DataError(f"{y_path}: {len(y)} labels for {n} images in {x_path.name}")
    return y


def read_labels(root: Path, split: str) -> Tensor:
    """int64 labels 0..9 of one split, from its y file alone (one byte per image: cheap to count)."""
    y_path = Path(root) / STL10.base_folder / STL10_FILES[split][1]
    if not y_path.is_file():
        raise DataError(f"{y_path} not found: STL-10 is not downloaded yet")
    y = np.fromfile(y_path, dtype=np.uint8)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{y_path}: labels must be 1..10, found {y.min()}..{y.max()}")
    return torch.from_numpy(y).long() - 1


def class_names(root: Path, y: Tensor) -> tuple[str, ...]:
    """Class names from class_names.txt (STL-10's ten when it is missing), enough for labels `y`."""
    names_file = Path(root) / STL10.base_folder / STL10.class_names_file
    classes = names_file.read_text().splitlines() if names_file.is_file() else STL10_CLASSES
    classes = [c.strip() for c in classes if c.strip()]
    if len(y) and int(y.max()) >= len(classes):
        raise DataError(f"{names_file}: {len(classes)} class names for labels up to {int(y.max()) + 1}")
    return tuple(classes)


def write_split(root: Path, split: str, images: Tensor, labels: Tensor) -> None:
    """Write uint8 images [N,3,96,96] and labels 0..9 as STL-10 binaries (the inverse of the reader)."""
    folder = Path(root) / STL10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    x_name, y_name = STL10_FILES[split]
    images.transpose(2, 3).contiguous().numpy().tofile(folder / x_name)  # back to column-major
    (labels + 1).to(torch.uint8).numpy().tofile(folder / y_name)


def present(root: Path, splits) -> bool:
    return all((root / STL10.base_folder / name).is_file() for split in splits for name in STL10_FILES[split])


def download(root: Path) -> None:
    """Fetch STL-10 with torchvision's downloader (md5-checked, progress bar), into `root`.

    Download and extraction go to a private temporary folder and finished files are then moved into
    place, so an interrupted download or a second worker downloading at the same time never leaves a
    half-written .bin where the reader would find it. The 2.6 GB archive is deleted after extraction.
    """
    target = root / STL10.base_folder
    expected = ", ".join(name for names in STL10_FILES.values() for name in names)
    missing = ", ".join(n for names in STL10_FILES.values() for n in names if not (target / n).is_file())
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".stl10-download-") as tmp:
            download_and_extract_archive(
                STL10.url, tmp, filename=STL10.filename, md5=STL10.tgz_md5, remove_finished=True
            )
            target.mkdir(exist_ok=True)
            for f in (Path(tmp) / STL10.base_folder).iterdir():
                if not (target / f.name).exists():
                    os.replace(f, target / f.name)
    except Exception as e:  # no network, proxy, disk full, bad checksum: all end the same way
        raise DataError(
            f"STL-10 is not in {target} (missing {missing}) and downloading it failed ({type(e).__name__}: {e}); "
            f"download {STL10.url} elsewhere and extract it so that {target} holds {expected}"
        ) from None
