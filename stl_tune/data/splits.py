"""A config's data: its source (data.source auto resolved from the tree), the labelled images and
their train / validation / test splits, the data line that describes them, and prepare(), which
readies them before any training."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchvision.datasets import STL10

from stl_tune.config import DataConfig
from stl_tune.data import stl10
from stl_tune.data.decode import decode_folder, read_folder, resize
from stl_tune.data.folders import (
    FOLDER_TEST_SEED,
    SPLITS,
    class_labels,
    folder_splits,
    image_suffixes,
    list_classes,
    subfolders,
)
from stl_tune.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console


def resolve(cfg: DataConfig) -> DataConfig:
    """cfg with an absolute data.dir (one cache entry per folder however it is spelled) and
    data.source auto resolved from the tree (found_source)."""
    root = Path(cfg.dir).expanduser().resolve()
    source = found_source(root) if cfg.source == "auto" else cfg.source
    return dataclasses.replace(cfg, dir=str(root), source=source)


def found_source(root: Path) -> str:
    """data.source auto resolved from root's tree: "folder" when a sub-folder is split-named or
    holds files (class folders), else "stl10": root/stl10_binary/, or nothing yet (a missing or
    empty root, or folders of folders such as data/fake/stl10_binary/), where STL-10 is downloaded."""
    if (root / STL10.base_folder).is_dir() or not root.is_dir():
        return "stl10"
    if (root / stl10.STL10_FILES["train"][0]).is_file():
        raise DataError(f"{root} holds the STL-10 files themselves: set data.dir to the folder above it, {root.parent}")
    for sub in subfolders(root):
        if sub.name in SPLITS or any(f.is_file() and not f.name.startswith(".") for f in sub.iterdir()):
            return "folder"
    loose = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in image_suffixes())
    if loose:
        raise DataError(
            f"{root}: {loose:,} images but no class sub-folders: a folder dataset holds "
            f"{root}/<class name>/<image files>, one sub-folder per class"
        )
    return "stl10"


def ensure_downloaded(cfg: DataConfig) -> None:
    """Download STL-10 into cfg.dir if any labelled-split file is missing (a no-op for folders).
    prepare() calls it once before any training, so workers don't all download at once."""
    cfg = resolve(cfg)
    if cfg.source == "stl10" and not stl10.present(Path(cfg.dir), stl10.STL10_FILES):
        stl10.download(Path(cfg.dir))


@functools.lru_cache(maxsize=4)
def read_stl10(root: str, image_size: int, split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One STL-10 split on the CPU, resized to image_size; downloaded first if any file is missing."""
    if not stl10.present(Path(root), [split]):
        stl10.download(Path(root))
    x, y = stl10.read_stl10_split(Path(root), split)
    return resize(x, image_size), y, stl10.class_names(Path(root), y)


def stratified_split(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(keep, held) sorted index tensors; each class holds out round(fraction * its count) images.

    At least one image per class is held out when fraction > 0 and the class has two or more, so
    tiny folder datasets still test every class. The draw depends only on (y, fraction, seed); how
    many images are held out depends only on the class counts and fraction, never on the seed.
    """
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(round(fraction * len(idx)), 1 if fraction > 0 else 0), len(idx) - 1)
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


Labelled = tuple[Tensor | None, Tensor, tuple[str, ...]]  # images (None: labels only), labels, classes


def labelled(cfg: DataConfig, split: str, images: bool = True) -> Labelled | None:
    """CPU uint8 images, int64 labels and class names of one split of a source: "train" (the images
    validation is carved from unless the dataset has its own), "val" (a split-layout folder's val/;
    None for every other source) or "test".

    With images=False nothing is decoded or downloaded: labels come from STL-10's one-byte-per-image
    label files and from folder listings, so counting a dataset is cheap.
    """
    if cfg.source == "stl10":
        if split == "val":
            return None
        if images:
            return read_stl10(cfg.dir, cfg.image_size, split)
        y = stl10.read_labels(Path(cfg.dir), split)
        return None, y, stl10.class_names(Path(cfg.dir), y)
    splits = folder_splits(cfg.dir)
    if split == "val" and "val" not in splits:
        return None  # validation is carved from "train"
    d = splits.get("all") or splits[split]
    if images:
        x, y, classes = read_folder(str(d), cfg.image_size)
    else:
        files = list_classes(d).files
        x, y, classes = None, class_labels(files), tuple(files)
    if "all" in splits:  # the class layout: a fixed share of each class is the test split
        if cfg.test_fraction <= 0:
            raise DataError(
                f"{cfg.dir}: data.test_fraction must be > 0 for a class-layout folder "
                "(<class>/): its test split is that share of each class"
            )
        rest, test = stratified_split(y, cfg.test_fraction, FOLDER_TEST_SEED)
        idx = test if split == "test" else rest
        x, y = (None if x is None else x[idx]), y[idx]
    return x, y, classes


def train_val(
    cfg: DataConfig, seed: int, images: bool = True
) -> tuple[Tensor | None, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """The labelled images a run may see (never the test split): images (None unless `images`),
    labels, the (train, val) index tensors into them, and the class names."""
    x, y, classes = labelled(cfg, "train", images)
    own_val = labelled(cfg, "val", images)
    if own_val is not None:  # val/ is the validation split, appended after train/
        vx, vy, _ = own_val
        train, val = torch.arange(len(y)), torch.arange(len(y), len(y) + len(vy))
        x, y = (None if x is None else torch.cat([x, vx])), torch.cat([y, vy])
    else:
        train, val = stratified_split(y, cfg.val_fraction, seed)
    if cfg.train_on_val:
        train, val = torch.arange(len(y)), torch.arange(0)
    return x, y, train, val, classes


def train_size(cfg: DataConfig) -> int:
    """How many images a run of `cfg` trains on: len(load_data(cfg, seed).train_y), for any seed.

    Counted from label files and folder listings: no image is decoded and nothing is downloaded
    (a DataError when STL-10 is not there yet: call it after ensure_downloaded).
    """
    return len(train_val(resolve(cfg), seed=0, images=False)[2])


def describe(cfg: DataConfig) -> str:
    """One line on what a run of `cfg` reads, as cheap as train_size, e.g. "folder data/pets: split
    layout (train/ val/ test/), 3 classes, 1,437 train / 160 val / 360 test images"; the source
    named is the one read (data.source auto: the one found), and the files of a folder dataset
    that are not images are counted ("; skipped 2 files that are not images: notes.txt, .DS_Store")."""
    resolved = resolve(cfg)
    _, _, train, val, classes = train_val(resolved, seed=0, images=False)
    n_test = len(labelled(resolved, "test", images=False)[1])
    skipped: list[Path] = []
    if resolved.source == "stl10":
        layout = "STL-10 binaries"
    else:
        splits = folder_splits(resolved.dir)
        if "all" in splits:
            layout = f"class layout (<class>/; test: {cfg.test_fraction:.0%} of each class, fixed)"
        else:
            carved = "" if "val" in splits or cfg.train_on_val else "; val: carved from train/"
            layout = f"split layout ({' '.join(s + '/' for s in splits)}{carved})"
        skipped = [f for d in splits.values() for f in list_classes(d).skipped]
    line = (
        f"{resolved.source} {cfg.dir}: {layout}, {len(classes)} classes, "
        f"{len(train):,} train / {len(val):,} val / {n_test:,} test images"
    )
    return line + (f"; {skipped_note(skipped)}" if skipped else "")


def skipped_note(skipped: list[Path]) -> str:
    """'skipped 3 files that are not images: notes.txt, .DS_Store, a.heic' (up to 3 distinct names)."""
    names = list(dict.fromkeys(f.name for f in skipped))  # distinct names, in listing order
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    what = "files that are not images" if len(skipped) > 1 else "file that is not an image"
    return f"skipped {len(skipped):,} {what}: {shown}"


def prepare(cfg: DataConfig, progress: Console | None = None) -> str:
    """Ready the data of `cfg` before any training and return its data line (describe).

    STL-10: downloaded when missing, then each split's file sizes checked. A folder dataset: its
    tree checked, then every image of every split decoded once into the decode cache (progress
    bars on the console `progress` for large folders), so that an unreadable file is one
    DataError here, before any trial or epoch, and the trainings that follow read the cache
    instead of decoding. The test images are decoded too (the final training scores them).
    """
    resolved = resolve(cfg)
    if resolved.source == "stl10":
        ensure_downloaded(resolved)
        for split in stl10.STL10_FILES:
            stl10.checked_labels(Path(resolved.dir), split)
        return describe(cfg)
    line = describe(cfg)
    for d in folder_splits(resolved.dir).values():
        decode_folder(d, resolved.image_size, progress)
    return line
