"""A run's dataset on the training device: the images copied there once per process and shared by
every seed and split that reads them (the device cache), and the split as index tensors."""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from stl_tune.config import DataConfig
from stl_tune.data.decode import read_folder
from stl_tune.data.splits import labelled, read_stl10, resolve, train_val


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
    return _load(dataclasses.astuple(resolve(cfg)), seed, str(device), with_test)


def _source(cfg: DataConfig) -> tuple:
    """What decides which images are labelled and which are test: cfg less its split settings."""
    return dataclasses.astuple(dataclasses.replace(cfg, val_fraction=0.0, train_on_val=False))


@functools.lru_cache(maxsize=4)  # the labelled and test images of two sources, or of one on two devices
def _on_device(source: tuple, part: str, device: str) -> tuple[Tensor, Tensor]:
    """(uint8 images, int64 labels) of a source's "labelled" images (train and validation, in
    train_val's order) or its "test" images, copied to `device` once."""
    cfg = DataConfig(*source)
    if part == "labelled":
        x, y, *_ = train_val(cfg, seed=0)
    else:
        x, y, _ = labelled(cfg, "test")
    return x.to(device), y.to(device)


@functools.lru_cache(maxsize=8)  # index tensors and statistics: the images are _on_device's
def _load(cfg_fields: tuple, seed: int, device: str, with_test: bool) -> Dataset:
    cfg = DataConfig(*cfg_fields)
    x, _, train, val, classes = train_val(cfg, seed)  # host images: their reads are cached
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
    for cached in (read_stl10, read_folder, _on_device, _load):
        cached.cache_clear()
