"""Training throughput of the stl-tune trainer against a plain PyTorch loop, side by side.

Both train the same model (build_model), batch size and image size on the same uint8 images, and
are timed in images per second with augmentation included:

  reference  the usual recipe: a DataLoader whose workers augment one image at a time with
             torchvision v2 transforms (RandomCrop with reflect padding, RandomHorizontalFlip,
             RandAugment, ToDtype), fp32, AdamW, plain cross-entropy.
  trainer    stl_tune.train.train(): the whole dataset on the device, augmented there in batches
             (per-image crop/flip/RandAugment draws), plus what the recipe adds on top: Mixup/CutMix,
             label smoothing, EMA; bf16 autocast and channels_last on CUDA.

The trainer runs with data.train_on_val=true, so its epochs hold no evaluation and no checkpoint:
both columns time training only. The reference runs first, so nothing the trainer sets globally
can speed it up. The first epoch of each is a warm-up (cuDNN autotuning, worker start) and is not
counted when --epochs > 1. TFLOP/s count the model's forward+backward only (FlopCounterMode, on
the meta device), against the bf16 dense peak; the fp32 reference is measured against it too,
since that is what the GPU could do.

CPU (about 1 minute on 2 cores; --image-size 48 --images 1280 --epochs 3 takes about 3):
  python benchmarks/bench_trainer.py --device cpu --width 16 --image-size 32 --images 768 --epochs 2
H200, the default model and size (width 64, 96 px), per batch size:
  for b in 64 256; do python benchmarks/bench_trainer.py --device cuda --batch-size $b --images 10240; done
Results go to docs/BENCHMARKS.md (the table printed at the end is Markdown).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from stl_tune import config as C
from stl_tune.data import load_data, write_fake_stl10
from stl_tune.model import build_model
from stl_tune.train import train

PROJECT_EPOCHS, PROJECT_IMAGES = 200, 4500  # a full STL-10 run: 200 epochs of 90 % of 5,000 images


# ------------------------------------------------------------------------------- reference loop
class PerImage(torch.utils.data.Dataset):
    """uint8 images augmented one at a time in __getitem__, as in most training scripts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: v2.Transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.x[i]), self.y[i]


def reference_transform(a: C.AugmentConfig, size: int) -> v2.Compose:
    """The per-image equivalent of stl_tune.augment.augment_images for the same config."""
    steps: list[v2.Transform] = []
    if a.crop_padding > 0:
        steps.append(v2.RandomCrop(size, padding=a.crop_padding, padding_mode="reflect"))
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    if a.randaugment_ops > 0:
        steps.append(v2.RandAugment(a.randaugment_ops, a.randaugment_magnitude))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


def time_reference(cfg: C.TrainConfig, device: torch.device, workers: int) -> tuple[list[float], int]:
    """(seconds per epoch, images per epoch) of the plain loop."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed, "cpu")  # the trainer's images, on the host for the workers
    model = build_model(cfg.model, data.num_classes, data.mean, data.std).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    loader = DataLoader(
        PerImage(data.train_x, data.train_y, reference_transform(cfg.augment, cfg.data.image_size)),
        batch_size=cfg.optim.batch_size,
        shuffle=True,
        drop_last=True,  # as the trainer: same images per epoch
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,  # no worker restart inside the timed epochs
    )
    seconds = []
    for _ in range(cfg.optim.epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the queued steps belong to this epoch
        seconds.append(time.perf_counter() - t0)
    return seconds, len(loader) * cfg.optim.batch_size


# -------------------------------------------------------------------------------------- trainer
def time_trainer(cfg: C.TrainConfig) -> list[float]:
    """Seconds per epoch of stl_tune.train.train (it also drops the last partial batch)."""
    return [h["seconds"] for h in train(cfg).history]


# -------------------------------------------------------------------------------------- report
def flops_per_image(cfg: C.TrainConfig) -> float:
    """Forward+backward FLOPs of one training image (shapes only: counted on the meta device)."""
    with torch.device("meta"):
        model = build_model(cfg.model, 10).train()
        x = torch.empty(cfg.optim.batch_size, 3, cfg.data.image_size, cfg.data.image_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / cfg.optim.batch_size


def steady(seconds: list[float]) -> float:
    """Mean seconds per epoch, the first (warm-up) epoch left out when there are more."""
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return sum(timed) / len(timed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=64, help="model.width")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=96, help="pixels per side")
    p.add_argument("--images", type=int, default=4500, help="training images per epoch (rounded up to 10 classes)")
    p.add_argument("--epochs", type=int, default=3, help="per loop; the first is warm-up when > 1")
    p.add_argument("--stem-stride", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H200 SXM: 989)")
    # CPU: 0, since the same few cores run the model and workers would only take threads from it;
    # CUDA: 8 per GPU, the common recipe (the H200 machine has 16 cores).
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (cpu 0, cuda 8)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides; the reference reads model, augment and optim from the same config")
    args = p.parse_args()
    device = torch.device(args.device)
    workers = args.workers if args.workers is not None else (0 if args.device == "cpu" else min(8, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        per_class = math.ceil(args.images / 10)
        write_fake_stl10(tmp, train_per_class=per_class, test_per_class=1)
        cfg = C.from_dict(None, {
            "data.dir": tmp, "data.image_size": args.image_size, "data.train_on_val": True,
            "model.width": args.width, "model.stem_stride": args.stem_stride,
            "optim.batch_size": args.batch_size, "optim.epochs": args.epochs, "runtime.device": args.device,
            **C.parse_overrides(args.set),
        })  # fmt: skip
        ref_s, n = time_reference(cfg, device, workers)
        tr_s = time_trainer(cfg)

    flops = flops_per_image(cfg)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'CPU'} ({os.cpu_count()} cores), {torch.get_num_threads()} torch threads"
    m = cfg.model
    print(
        f"\n{hw}, torch {torch.__version__}; width {m.width}, blocks {m.blocks}, SE {m.se}, "
        f"stem stride {m.stem_stride}, {cfg.data.image_size} px, batch {cfg.optim.batch_size}, "
        f"{n} images/epoch, {len(ref_s)} epochs (first is warm-up when > 1), "
        f"{flops / 1e9:.3g} GFLOP per training image; reference workers {workers}\n"
    )
    header = f"| loop | img/s | s/epoch | {PROJECT_EPOCHS} ep x {PROJECT_IMAGES:,} img (min) | TFLOP/s |"
    if device.type == "cuda":
        header += " % of bf16 peak |"
    print(header)
    print("|" + "---|" * header.count(" |"))
    rates = {}
    for name, seconds in (("reference", ref_s), ("stl-tune", tr_s)):
        rate = rates[name] = n / steady(seconds)
        tflops = rate * flops / 1e12
        row = f"| {name} | {rate:,.0f} | {steady(seconds):.2f} | {PROJECT_EPOCHS * PROJECT_IMAGES / rate / 60:,.1f} | {tflops:.3g} |"
        if device.type == "cuda":
            row += f" {100 * tflops / args.peak_tflops:.1f} |"
        print(row)
    print(f"\nstl-tune / reference: {rates['stl-tune'] / rates['reference']:.2f}x")


if __name__ == "__main__":
    main()
