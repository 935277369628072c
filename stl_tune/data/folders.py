"""Folder datasets: the two layouts, told apart by the names of the root's sub-folders, and the
listing of a class-folder directory (the tree only: decoding is decode.py's)."""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFile
from torch import Tensor

from stl_tune.errors import DataError

# Two layouts, told apart by the names of root's sub-folders (hidden ones are ignored):
#   class layout  root/<class>/<images>, no sub-folder named train, val or test. A fixed stratified
#                 share of each class (data.test_fraction, drawn with FOLDER_TEST_SEED) is the test
#                 split; validation is carved from the rest by data.val_fraction.
#   split layout  torchvision ImageFolder's root/train/<class>/ + root/test/<class>/, optionally
#                 root/val/<class>/: root's sub-folders are exactly train and test, or train, val
#                 and test. The test split is exactly test/; validation is val/ when present, else
#                 carved from train/ by data.val_fraction; data.test_fraction is not used. Every
#                 split must hold the same class folders.
# A tree that names some of train/val/test but fits neither (train/ without test/, or train/ and
# test/ beside a third folder) is refused as ambiguous rather than guessed.
# An image is a file whose extension PIL can open (image_suffixes: PNG, JPEG, TIFF, WebP, BMP, ...);
# other files in class folders (notes.txt, .DS_Store) are skipped and counted in the data line.
FOLDER_TEST_SEED = 0  # the test split of a class-layout folder never changes with the training seed
SPLITS = ("train", "val", "test")  # split-layout folder names, in the order they are listed


@functools.cache
def image_suffixes() -> frozenset[str]:
    """Lower-case file extensions of every image format PIL can open: not the save-only ones (PDF),
    nor stubs that need a handler installed (HDF5, GRIB, BUFR, WMF)."""
    Image.init()  # registers every plugin, not only the few PIL preloads
    readable = {
        fmt
        for fmt, (cls, _) in Image.OPEN.items()
        if not (isinstance(cls, type) and issubclass(cls, ImageFile.StubImageFile))
    }  # JPEG: a factory
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in readable)


def subfolders(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Listing:
    """The files of one class-folder directory d (d/<class>/<files>): `files`, {class: its images},
    both sorted; `skipped`, the files that are not images."""

    files: dict[str, list[Path]]
    skipped: list[Path]

    @property
    def images(self) -> list[Path]:
        return [f for fs in self.files.values() for f in fs]


def list_classes(d: Path) -> Listing:
    """d/<class>/ listed: at least 2 classes, each with at least one image (else a DataError that
    names the folder, and the extensions it holds when they are none PIL reads)."""
    class_dirs = subfolders(d)
    if len(class_dirs) < 2:
        raise DataError(
            f"{d}: a classifier needs at least 2 class sub-folders "
            f"({d}/<class name>/<image files>), found {len(class_dirs)}"
        )
    files, skipped = {}, []
    for c in class_dirs:
        entries = sorted(f for f in c.iterdir() if f.is_file())
        files[c.name] = [f for f in entries if f.suffix.lower() in image_suffixes()]
        others = [f for f in entries if f.suffix.lower() not in image_suffixes()]
        skipped += others
        if not files[c.name]:
            kinds = collections.Counter(f.suffix.lower() or f.name for f in others if not f.name.startswith("."))
            if not kinds:
                raise DataError(f"{c}: empty class folder, no images")
            found = ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common(3))
            raise DataError(
                f"{c}: no image file PIL can read, its files are {found}: convert them to PNG or "
                f"JPEG (ImageMagick: mogrify -format png *{kinds.most_common(1)[0][0]})"
            )
    return Listing(files, skipped)


def class_labels(files: dict[str, list[Path]]) -> Tensor:
    """int64 labels of a Listing's images, in its order: class i's files are label i."""
    return torch.arange(len(files)).repeat_interleave(torch.tensor([len(f) for f in files.values()]))


def folder_splits(root: str | Path) -> dict[str, Path]:
    """The class-folder directories of a folder dataset: {"all": root} in the class layout,
    {"train": root/train, ["val": root/val,] "test": root/test} in the split layout (see above).

    Checks the tree, not the image bytes: an ambiguous tree, an empty class folder or splits whose
    class folders differ is a DataError naming the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder dataset not found: {root}")
    names = [d.name for d in subfolders(root)]
    found = [s for s in SPLITS if s in names]
    if not found:
        return {"all": root}
    layout = "the split layout holds train/<class>/ and test/<class>/ (val/<class>/ optional) and nothing else"
    if "train" not in found or "test" not in found:
        missing = " or ".join(f"{s}/" for s in ("train", "test") if s not in found)
        raise DataError(
            f"{root}: ambiguous folder tree, {'/, '.join(found)}/ but no {missing}: {layout}; "
            "the class layout (<class>/) cannot have a class named train, val or test"
        )
    if len(found) < len(names):
        others = ", ".join(f"{n}/" for n in names if n not in SPLITS)
        raise DataError(f"{root}: ambiguous folder tree, train/ and test/ beside {others}: {layout}")
    splits = {s: root / s for s in found}
    classes = {s: set(list_classes(d).files) for s, d in splits.items()}
    for s in found[1:]:
        lacks, extra = classes["train"] - classes[s], classes[s] - classes["train"]
        if lacks or extra:
            parts = [
                f"{s}/ {what} {', '.join(map(repr, sorted(differ)))}"
                for what, differ in (("lacks", lacks), ("has extra", extra))
                if differ
            ]
            raise DataError(f"{root}: class folders differ between train/ and {s}/: {'; '.join(parts)}")
    return splits
