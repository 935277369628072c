"""Images in a folder, decoded to uint8 pixels of one size, in threads, and the decode cache that
keeps them on disk for the next run (and each worker of a search)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from stl_tune.data.folders import Listing, class_labels, list_classes
from stl_tune.errors import DataError
from stl_tune.files import atomic_write

if TYPE_CHECKING:
    from rich.console import Console


def resize(x: Tensor, size: int) -> Tensor:
    """uint8 [N,3,H,W] -> uint8 [N,3,size,size]; antialiased, so downscaling does not alias."""
    if x.shape[-2:] == (size, size):
        return x
    return TF.resize(x, [size, size], antialias=True)


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
            out[i] = resize(_decode(files[i])[None], image_size)[0]
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
IMAGE_CACHE_VERSION = 1  # raise when _decode or resize changes what a file decodes to


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
    """Atomically (files.atomic_write), so a reader never sees half a file; a cache that cannot be
    written (read-only, full) only means the next run decodes again."""
    try:
        with atomic_write(path) as f:
            torch.save({"images": x}, f)
        for old in path.parent.glob(path.name.split("-")[0] + "-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def decode_folder(d: Path, image_size: int, progress: Console | None = None) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Every image under d/<class>/ (classes in sorted order) as uint8 [N,3,S,S], from the decode
    cache or decoded (read_images, with a progress bar on the console `progress` for many images)
    and cached; int64 labels; class names."""
    listing = list_classes(d)
    files, cache = listing.images, _cache_file(d, listing, image_size)
    x = _read_cache(cache, len(files), image_size)
    if x is None:
        from stl_tune.progress import image_progress  # rich: only when there is something to show

        with image_progress(len(files) if progress else 0, f"decoding {d.name}/", progress) as advance:
            x = read_images(files, image_size, advance)
        _write_cache(cache, x)
    return x, class_labels(listing.files), tuple(listing.files)


@functools.lru_cache(maxsize=3)  # train/, val/ and test/ of one split-layout folder
def read_folder(d: str, image_size: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """decode_folder(d), kept for the rest of the process."""
    return decode_folder(Path(d), image_size)
