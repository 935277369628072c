"""Images in, uint8 tensors on the training device out: STL-10 binaries or a folder dataset, in the
class layout (root/<class>/) or torchvision ImageFolder's split layout (root/train/<class>/, ...),
which one found from data.dir's tree unless data.source names it.

The whole labelled dataset is small (STL-10 train: 5,000 x 3x96x96 bytes = 138 MB), so it is read once
per process, kept as uint8 on the device, and split into train/validation by index; augmentation and
normalisation happen later, on the device, in batches (stl_tune/augment.py, stl_tune/train.py).
Before any training, prepare() downloads STL-10 or decodes every image of a folder dataset once, in
threads, into a decode cache outside the dataset; a bad file is one DataError there, and the
trainings that follow (each worker of a search) read the cache instead of decoding.
Also here: a writer of small fake datasets in STL-10's exact binary layout, for tests and smoke runs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor
from torchvision.datasets import STL10
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.transforms.v2 import functional as TF

from stl_tune.config import DataConfig
from stl_tune.errors import DataError  # defined in the leaf: the worker loop catches it without torch

if TYPE_CHECKING:
    from rich.console import Console


# ------------------------------------------------------------------------------- STL-10 binaries
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
    y = _stl10_checked(Path(root), split)
    x = np.fromfile(Path(root) / STL10.base_folder / STL10_FILES[split][0], dtype=np.uint8)
    # [N, C, W, H] in file order -> swap the pixel axes; contiguous so later slicing stays cheap.
    images = torch.from_numpy(x).view(len(y), 3, STL10_SIDE, STL10_SIDE).transpose(2, 3).contiguous()
    return images, y


def _stl10_checked(root: Path, split: str) -> Tensor:
    """The labels of one split, once its X file's size says it holds exactly one image per label
    (a stat, no read: prepare() checks every split this way before any training)."""
    x_path, y_path = (root / STL10.base_folder / name for name in STL10_FILES[split])
    y = _stl10_labels(root, split)
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


def _stl10_labels(root: Path, split: str) -> Tensor:
    """int64 labels 0..9 of one split, from its y file alone (one byte per image: cheap to count)."""
    y_path = Path(root) / STL10.base_folder / STL10_FILES[split][1]
    if not y_path.is_file():
        raise DataError(f"{y_path} not found: STL-10 is not downloaded yet")
    y = np.fromfile(y_path, dtype=np.uint8)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{y_path}: labels must be 1..10, found {y.min()}..{y.max()}")
    return torch.from_numpy(y).long() - 1


def _stl10_classes(root: Path, y: Tensor) -> tuple[str, ...]:
    """Class names from class_names.txt (STL-10's ten when it is missing), enough for labels `y`."""
    names_file = Path(root) / STL10.base_folder / STL10.class_names_file
    classes = names_file.read_text().splitlines() if names_file.is_file() else STL10_CLASSES
    classes = [c.strip() for c in classes if c.strip()]
    if len(y) and int(y.max()) >= len(classes):
        raise DataError(f"{names_file}: {len(classes)} class names for labels up to {int(y.max()) + 1}")
    return tuple(classes)


def _write_stl10_split(root: Path, split: str, images: Tensor, labels: Tensor) -> None:
    """Write uint8 images [N,3,96,96] and labels 0..9 as STL-10 binaries (the inverse of the reader)."""
    folder = Path(root) / STL10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    x_name, y_name = STL10_FILES[split]
    images.transpose(2, 3).contiguous().numpy().tofile(folder / x_name)  # back to column-major
    (labels + 1).to(torch.uint8).numpy().tofile(folder / y_name)


def ensure_downloaded(cfg: DataConfig) -> None:
    """Download STL-10 into cfg.dir if any labelled-split file is missing (a no-op for folders).
    prepare() calls it once before any training, so workers don't all download at once."""
    cfg = _resolved(cfg)
    if cfg.source == "stl10" and not _stl10_present(Path(cfg.dir), STL10_FILES):
        _download_stl10(Path(cfg.dir))


def _stl10_present(root: Path, splits) -> bool:
    return all((root / STL10.base_folder / name).is_file() for split in splits for name in STL10_FILES[split])


def _download_stl10(root: Path) -> None:
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


@functools.lru_cache(maxsize=4)
def _stl10(root: str, image_size: int, split: str) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """One STL-10 split on the CPU, resized to image_size; downloaded first if any file is missing."""
    if not _stl10_present(Path(root), [split]):
        _download_stl10(Path(root))
    x, y = read_stl10_split(Path(root), split)
    return _resize(x, image_size), y, _stl10_classes(Path(root), y)


def _resize(x: Tensor, size: int) -> Tensor:
    """uint8 [N,3,H,W] -> uint8 [N,3,size,size]; antialiased, so downscaling does not alias."""
    if x.shape[-2:] == (size, size):
        return x
    return TF.resize(x, [size, size], antialias=True)


# ------------------------------------------------------------------------------ folder datasets
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


def _subfolders(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _found_source(root: Path) -> str:
    """data.source auto resolved from root's tree: "folder" when a sub-folder is split-named or
    holds files (class folders), else "stl10": root/stl10_binary/, or nothing yet (a missing or
    empty root, or folders of folders such as data/fake/stl10_binary/), where STL-10 is downloaded."""
    if (root / STL10.base_folder).is_dir() or not root.is_dir():
        return "stl10"
    if (root / STL10_FILES["train"][0]).is_file():
        raise DataError(f"{root} holds the STL-10 files themselves: set data.dir to the folder above it, {root.parent}")
    for sub in _subfolders(root):
        if sub.name in SPLITS or any(f.is_file() and not f.name.startswith(".") for f in sub.iterdir()):
            return "folder"
    loose = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in image_suffixes())
    if loose:
        raise DataError(
            f"{root}: {loose:,} images but no class sub-folders: a folder dataset holds "
            f"{root}/<class name>/<image files>, one sub-folder per class"
        )
    return "stl10"


@dataclass
class Listing:
    """The files of one class-folder directory d (d/<class>/<files>): `files`, {class: its images},
    both sorted; `skipped`, the files that are not images."""

    files: dict[str, list[Path]]
    skipped: list[Path]

    @property
    def images(self) -> list[Path]:
        return [f for fs in self.files.values() for f in fs]


def _listing(d: Path) -> Listing:
    """d/<class>/ listed: at least 2 classes, each with at least one image (else a DataError that
    names the folder, and the extensions it holds when they are none PIL reads)."""
    class_dirs = _subfolders(d)
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


def _class_labels(files: dict[str, list[Path]]) -> Tensor:
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
    names = [d.name for d in _subfolders(root)]
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
    classes = {s: set(_listing(d).files) for s, d in splits.items()}
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


def _decode(f: Path) -> Tensor:
    """uint8 [3,H,W] RGB pixels of one image file; grey, palette and RGBA images become RGB.

    PIL, not torchvision.io: its image decoding is deprecated since torchvision 0.29. A 16-bit grey
    PNG (PIL mode "I;16", or "I") keeps its high byte, as torchvision's to_dtype(scale=True) maps
    16 to 8 bits: PIL's convert("RGB") would clip every value above 255 to white.
    """
    try:
        with Image.open(f) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I"):
                grey = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
                rgb = np.repeat(grey[..., None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # not an image, truncated, unsupported: PIL raises many exception types
        raise DataError(f"{f}: cannot read this image ({e})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def read_images(files: list[Path], image_size: int, progress: Callable[[int], None] | None = None) -> Tensor:
    """uint8 [N,3,S,S]: each file decoded (_decode) and resized to S (non-square images are
    stretched, so no part of the object is cut), in threads; progress(n) after every n images.

    Threads, not processes (docs/BENCHMARKS.md, "Decoding images": processes were the slowest):
    processes pay for starting and for sending every decoded image back; PIL's decoders release
    the GIL, so threads can use idle cores. Every file that cannot be read is one DataError naming
    the first and counting the others.
    """
    out = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)

    def read(i: int) -> DataError | None:
        try:
            out[i] = _resize(_decode(files[i])[None], image_size)[0]
        except DataError as e:
            return e
        return None

    failed: list[DataError] = []
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for error in pool.map(read, range(len(files))):
            if error is not None:
                failed.append(error)
            if progress is not None:
                progress(1)
    if failed:
        n = len(failed) - 1
        more = f" (and {n:,} more file{'s' if n > 1 else ''} that cannot be read)" if n else ""
        raise DataError(f"{failed[0]}{more}; remove or replace them")
    return out


# Decoded folders are cached on disk, so a second run (or each worker of a search) reads one file
# instead of decoding every image again: one file per class-folder directory and image size, under
# image_cache_dir() (never inside the dataset, which may be read-only), named by the directory and
# by what was decoded: each file's class, name, size and mtime, and IMAGE_CACHE_VERSION. A changed,
# added or removed image names another file; writing it removes the directory's older ones.
IMAGE_CACHE_VERSION = 1  # raise when _decode or _resize changes what a file decodes to


def image_cache_dir() -> Path:
    """$XDG_CACHE_HOME/stl-tune/images, ~/.cache/stl-tune/images without it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stl-tune" / "images"


def _cache_file(d: Path, listing: Listing, image_size: int) -> Path:
    where = hashlib.sha256(f"{d.resolve()}\0{image_size}".encode()).hexdigest()[:16]
    stamps = [
        (c, f.name, st.st_size, st.st_mtime_ns) for c, fs in listing.files.items() for f in fs for st in [f.stat()]
    ]
    what = hashlib.sha256(json.dumps([IMAGE_CACHE_VERSION, stamps]).encode()).hexdigest()[:16]
    return image_cache_dir() / f"{where}-{what}.pt"


def _read_cache(path: Path, n: int, image_size: int) -> Tensor | None:
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)["images"]
    except Exception:  # none yet, or a truncated or foreign file: decode again, and replace it
        return None
    return x if x.dtype == torch.uint8 and x.shape == (n, 3, image_size, image_size) else None


def _write_cache(path: Path, x: Tensor) -> None:
    """Atomically (a temporary file renamed), so a reader never sees half a file; a cache that
    cannot be written (read-only, full) only means the next run decodes again."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".pt", delete=False) as f:
            tmp = Path(f.name)
            torch.save({"images": x}, f)
        os.replace(tmp, path)
        for old in path.parent.glob(path.name.split("-")[0] + "-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def decode_folder(d: Path, image_size: int, progress: Console | None = None) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Every image under d/<class>/ (classes in sorted order) as uint8 [N,3,S,S], from the decode
    cache or decoded (read_images, with a progress bar on the console `progress` for many images)
    and cached; int64 labels; class names."""
    listing = _listing(d)
    files, cache = listing.images, _cache_file(d, listing, image_size)
    x = _read_cache(cache, len(files), image_size)
    if x is None:
        from stl_tune.progress import image_progress  # rich: only when there is something to show

        with image_progress(len(files) if progress else 0, f"decoding {d.name}/", progress) as advance:
            x = read_images(files, image_size, advance)
        _write_cache(cache, x)
    return x, _class_labels(listing.files), tuple(listing.files)


@functools.lru_cache(maxsize=3)  # train/, val/ and test/ of one split-layout folder
def read_folder(d: str, image_size: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """decode_folder(d), kept for the rest of the process."""
    return decode_folder(Path(d), image_size)


# ---------------------------------------------------------------------------------------- splits
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


def _labelled(cfg: DataConfig, split: str, images: bool = True) -> Labelled | None:
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
            return _stl10(cfg.dir, cfg.image_size, split)
        y = _stl10_labels(Path(cfg.dir), split)
        return None, y, _stl10_classes(Path(cfg.dir), y)
    splits = folder_splits(cfg.dir)
    if split == "val" and "val" not in splits:
        return None  # validation is carved from "train"
    d = splits.get("all") or splits[split]
    if images:
        x, y, classes = read_folder(str(d), cfg.image_size)
    else:
        files = _listing(d).files
        x, y, classes = None, _class_labels(files), tuple(files)
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


def _train_val(
    cfg: DataConfig, seed: int, images: bool = True
) -> tuple[Tensor | None, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """The labelled images a run may see (never the test split): images (None unless `images`),
    labels, the (train, val) index tensors into them, and the class names."""
    x, y, classes = _labelled(cfg, "train", images)
    own_val = _labelled(cfg, "val", images)
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
    return len(_train_val(_resolved(cfg), seed=0, images=False)[2])


def describe(cfg: DataConfig) -> str:
    """One line on what a run of `cfg` reads, as cheap as train_size, e.g. "folder data/pets: split
    layout (train/ val/ test/), 3 classes, 1,437 train / 160 val / 360 test images"; the source
    named is the one read (data.source auto: the one found), and the files of a folder dataset
    that are not images are counted ("; skipped 2 files that are not images: notes.txt, .DS_Store")."""
    resolved = _resolved(cfg)
    _, _, train, val, classes = _train_val(resolved, seed=0, images=False)
    n_test = len(_labelled(resolved, "test", images=False)[1])
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
        skipped = [f for d in splits.values() for f in _listing(d).skipped]
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


# ---------------------------------------------------------------------------- before any training
def prepare(cfg: DataConfig, progress: Console | None = None) -> str:
    """Ready the data of `cfg` before any training and return its data line (describe).

    STL-10: downloaded when missing, then each split's file sizes checked. A folder dataset: its
    tree checked, then every image of every split decoded once into the decode cache (progress
    bars on the console `progress` for large folders), so that an unreadable file is one
    DataError here, before any trial or epoch, and the trainings that follow read the cache
    instead of decoding. The test images are decoded too (the final training scores them).
    """
    resolved = _resolved(cfg)
    if resolved.source == "stl10":
        ensure_downloaded(resolved)
        for split in STL10_FILES:
            _stl10_checked(Path(resolved.dir), split)
        return describe(cfg)
    line = describe(cfg)
    for d in folder_splits(resolved.dir).values():
        decode_folder(d, resolved.image_size, progress)
    return line


# ----------------------------------------------------------------------------- the loaded dataset
@dataclass
class Dataset:
    """A run's data on the training device: every labelled image it may see (train and validation)
    as uint8, and its split as index tensors into them. The images and labels are one copy per
    data source and device in this process, shared by every seed and split that reads them (see
    load_data): read them, never modify them in place. The trainer reads through the indices;
    train_x / val_x and the like gather a copy."""

    images: Tensor  # uint8 [N,3,S,S]: the labelled images, train/ then val/ for a split-layout folder
    labels: Tensor  # int64 [N], 0..num_classes-1
    train: Tensor  # int64 [n_train], sorted indices into images: the training split
    val: Tensor  # int64 [n_val], sorted; empty when data.train_on_val
    test_x: Tensor | None  # uint8 [T,3,S,S], only with load_data(..., with_test=True)
    test_y: Tensor | None
    classes: list[str]
    mean: tuple[float, float, float]  # per channel of the training split, in [0, 1] pixel units
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_x(self) -> Tensor:
        return self.images[self.train]

    @property
    def train_y(self) -> Tensor:
        return self.labels[self.train]

    @property
    def val_x(self) -> Tensor:
        return self.images[self.val]

    @property
    def val_y(self) -> Tensor:
        return self.labels[self.val]


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, exact, from 256-bin histograms
    (a float copy of STL-10 would be 550 MB)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].flatten(), minlength=256).double()
        p /= p.sum()
        m = float((p * values).sum())
        mean.append(m)
        # floor at one grey level: a constant channel (a greyscale dataset's copies, a blank
        # image set) would otherwise divide by 0 and turn the first loss into NaN
        std.append(max(math.sqrt(max(float((p * values**2).sum()) - m * m, 0.0)), 1 / 255))
    return tuple(mean), tuple(std)


def load_data(cfg: DataConfig, seed: int, device: torch.device | str = "cpu", with_test: bool = False) -> Dataset:
    """The dataset of `cfg`, split into train/validation by `seed`, as uint8 tensors on `device`.

    Cached per process: a worker running many trials reads the files and copies them to the device
    once, and a second call with the same arguments returns the same Dataset. Other seeds (confirm
    alternates them) and other validation shares get their own split, as index tensors into the
    same device copy of the images. Test images are read only when asked for (the search never does).
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
        device = torch.device("cuda", torch.cuda.current_device())
    return _load(dataclasses.astuple(_resolved(cfg)), seed, str(device), with_test)


def _resolved(cfg: DataConfig) -> DataConfig:
    """cfg with an absolute data.dir (one cache entry per folder however it is spelled) and
    data.source auto resolved from the tree (_found_source)."""
    root = Path(cfg.dir).expanduser().resolve()
    source = _found_source(root) if cfg.source == "auto" else cfg.source
    return dataclasses.replace(cfg, dir=str(root), source=source)


def _source(cfg: DataConfig) -> tuple:
    """What decides which images are labelled and which are test: cfg less its split settings."""
    return dataclasses.astuple(dataclasses.replace(cfg, val_fraction=0.0, train_on_val=False))


@functools.lru_cache(maxsize=4)  # the labelled and test images of two sources, or of one on two devices
def _on_device(source: tuple, part: str, device: str) -> tuple[Tensor, Tensor]:
    """(uint8 images, int64 labels) of a source's "labelled" images (train and validation, in
    _train_val's order) or its "test" images, copied to `device` once."""
    cfg = DataConfig(*source)
    if part == "labelled":
        x, y, *_ = _train_val(cfg, seed=0)
    else:
        x, y, _ = _labelled(cfg, "test")
    return x.to(device), y.to(device)


@functools.lru_cache(maxsize=8)  # index tensors and statistics: the images are _on_device's
def _load(cfg_fields: tuple, seed: int, device: str, with_test: bool) -> Dataset:
    cfg = DataConfig(*cfg_fields)
    x, _, train, val, classes = _train_val(cfg, seed)  # host images: their reads are cached
    mean, std = channel_stats(x[train])
    images, labels = _on_device(_source(cfg), "labelled", device)
    test_x, test_y = _on_device(_source(cfg), "test", device) if with_test else (None, None)
    return Dataset(
        images=images,
        labels=labels,
        train=train.to(device),
        val=val.to(device),
        test_x=test_x,
        test_y=test_y,
        classes=list(classes),
        mean=mean,
        std=std,
    )


def clear_cache() -> None:
    """Forget every cached read and device copy (tests; freeing device memory)."""
    for cached in (_stl10, read_folder, _on_device, _load):
        cached.cache_clear()


# ------------------------------------------------------------------------------------- fake data
FAKE_NOISE = 0.2  # std of per-pixel Gaussian noise, in [0, 1] pixel units


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """[B] hue (turns), saturation, value in [0, 1] -> [B,3] RGB in [0, 1] (the standard formula)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] * (1 - s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1)))


def _fake_images(labels: Tensor, num_classes: int, g: torch.Generator) -> Tensor:
    """uint8 [B,3,96,96] fake images whose class is a texture (stripes or a checker, one of
    ceil(n/2) orientations) tinted with one of n hues. Tints of neighbouring classes overlap, the
    patch lands anywhere at any size and phase, and a random colour background, a distractor patch
    of random texture and colour, and strong noise are added, so a tiny CNN needs both cues."""
    b = len(labels)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    n_orient = math.ceil(num_classes / 2)
    checker = labels >= n_orient  # first half of the classes stripes, second half checkers
    angle = (labels % n_orient) * math.pi / n_orient + (rand(b) - 0.5) * 0.2  # radians, +-5.7 deg
    hue = labels / num_classes + (rand(b) - 0.5) * 1.2 / num_classes  # +-0.6 class spacings

    pix = (torch.arange(STL10_SIDE) + 0.5) / STL10_SIDE  # pixel centres in [0, 1] image units
    yy, xx = pix[None, :, None], pix[None, None, :]  # [1,H,1], [1,1,W]

    def patch(angle: Tensor, checker: Tensor, scale: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """A textured soft disc: (texture in [-1, 1], mask in [0, 1]), each [B,H,W]."""
        r = (scale[0] + (scale[1] - scale[0]) * rand(b))[:, None, None] / 2  # radius, image units
        cy, cx = (rand(2, b)[..., None, None] * 0.8 + 0.1).unbind(0)  # centre may be near an edge
        cycles = 1.5 + 1.5 * rand(b)[:, None, None]  # periods across the disc: survives 16 px
        phase = 2 * math.pi * rand(2, b)[..., None, None]
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        u = ((xx - cx) * cos + (yy - cy) * sin) * cycles * math.pi / r
        v = (-(xx - cx) * sin + (yy - cy) * cos) * cycles * math.pi / r
        stripes = (u + phase[0]).sin()
        tex = torch.where(checker[:, None, None], stripes * (v + phase[1]).sin() * 2, stripes)
        dist = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() / r
        return tex.clamp(-1, 1), (4 * (1 - dist)).clamp(0, 1)  # edge softened over 1/4 radius

    # Background: a 3x3 grid of random colours, bilinearly smoothed; a distractor of no class.
    blobs = rand(b, 3, 3, 3) * 0.4 + rand(b, 1, 1, 1) * 0.4 + 0.1  # muted: a grey level plus colour
    bg = torch.nn.functional.interpolate(blobs, size=STL10_SIDE, mode="bilinear")
    d_tex, d_mask = patch(rand(b) * math.pi, rand(b) < 0.5, (0.25, 0.5))
    d_rgb = _hsv_to_rgb(rand(b), 0.3 + 0.5 * rand(b), 0.4 + 0.5 * rand(b))[:, :, None, None]
    img = bg * (1 - d_mask[:, None]) + d_mask[:, None] * d_rgb * (0.6 + 0.4 * d_tex[:, None])

    tex, mask = patch(angle, checker, (0.5, 0.95))
    rgb = _hsv_to_rgb(hue % 1, 0.7 + 0.3 * rand(b), 0.6 + 0.4 * rand(b))[:, :, None, None]
    fg = rgb * (0.55 + 0.45 * tex[:, None])  # texture contrast rides on the class tint
    img = img * (1 - mask[:, None]) + mask[:, None] * fg
    img = img * (0.7 + 0.6 * rand(b))[:, None, None, None]  # brightness
    img = img + FAKE_NOISE * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def write_fake_stl10(
    out_dir: str | Path,
    train_per_class: int = 50,
    test_per_class: int = 30,
    seed: int = 0,
    num_classes: int = 10,
) -> Path:
    """Write a small learnable dataset as out_dir/stl10_binary/{train,test}_{X,y}.bin and
    class_names.txt, in STL-10's exact layout; returns out_dir (use it as data.dir).

    Class names describe the cue, e.g. "stripes-36deg-hue072"."""
    if not 2 <= num_classes <= 10:
        raise ValueError(f"num_classes must be 2..10 (STL-10 labels are 1..10), got {num_classes}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("write_fake_stl10 needs at least one train and one test image per class")
    out_dir = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]
        images = torch.cat([_fake_images(chunk, num_classes, g) for chunk in labels.split(256)])
        _write_stl10_split(out_dir, split, images, labels)
    n_orient = math.ceil(num_classes / 2)
    names = [
        f"{'checker' if c >= n_orient else 'stripes'}-{round((c % n_orient) * 180 / n_orient)}deg"
        f"-hue{round(c * 360 / num_classes):03d}"
        for c in range(num_classes)
    ]
    (out_dir / STL10.base_folder / STL10.class_names_file).write_text("\n".join(names) + "\n")
    return out_dir
