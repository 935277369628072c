"""Training throughput of the stl-tune trainer against plain PyTorch loops, with the 200-epoch
projection of the default recipe.

Every row trains the same model (build_model), batch size and image size on the same images (a
fake STL-10 of --images training and --images/9 validation images, 4,500 and 500 by default, as
the real split), and evaluates the validation images after every epoch, flip TTA included:

  reference-fp32  the loop most scripts write: a DataLoader whose workers augment one image at a
                  time with torchvision v2 (RandomCrop with reflect padding, flip, RandAugment),
                  fp32, NCHW, AdamW (foreach), plain cross-entropy.
  reference-amp   the same loop with bf16 autocast, channels_last and fused AdamW, the precision and
                  layout the trainer uses on CUDA: the stl-tune / reference-amp ratio isolates the
                  data path and the step. CUDA only: on a CPU the trainer runs fp32, NCHW and
                  unfused too (its runtime switches' auto), so there reference-fp32 is the fair
                  reference.
  stl-tune        stl_tune.train.train() with the default recipe: the data on the device, augmented
                  there in chunks (per-image crop, flip, RandAugment draws), Mixup/CutMix, label
                  smoothing, EMA, evaluation with the EMA weights; compiled on CUDA (runtime.compile
                  auto). Timed in both phases: 1 + --epochs epochs with Mixup/CutMix, then --epochs
                  of plain cross-entropy.

The references run first, so nothing the trainer sets globally (cudnn.benchmark, which a plain
loop leaves off) speeds them up.
The first epoch of each row is its warm-up (DataLoader workers, cuDNN, compilation) and is not in
the steady figures; it is in the projection.

One JSON line per figure on stdout ({"row", "figure", "value", "unit", ...}); a Markdown table of
the same figures on stderr. Figures, per row:
  img_per_s          training images per second of whole steady epochs (training + evaluation)
  ms_per_step        steady epoch seconds per optimizer step (evaluation included)
  launches_per_step  CUDA: kernel launches (torch.profiler: cudaLaunchKernel, cuLaunchKernel,
                     cudaGraphLaunch) per step; CPU: ATen ops per step (tests/synctrace.py), the
                     CPU's stand-in. Over whole epochs after the first, evaluation and augmentation
                     included, in a separate run (profiling slows it)
  syncs_per_step     host syncs per step, same window: CUDA: warnings of
                     torch.cuda.set_sync_debug_mode("warn"); CPU: SyncTrace reads + blocking copies
  peak_mem_gib       torch.cuda.max_memory_allocated over the timed run (CUDA)
  compile_s          TrainResult.compile_seconds (stl-tune on CUDA; part of its first epoch)
  bf16_peak_pct      training FLOPs per image (forward + backward, FlopCounterMode; evaluation not
                     counted) x img/s, against --peak-tflops (default 790: an 8192^3 bf16 matrix
                     product on an H200 of this workplace ran at 769-798 TFLOP/s; the datasheet's
                     dense bf16 is 989) (CUDA)
  projection_min     200 epochs of the default recipe at this --images, in minutes: the measured
                     first epoch, then 199 steady ones (stl-tune: 99 more with Mixup/CutMix, then
                     100 plain, its epochs and mix_epochs defaults)
  ratio              stl-tune img/s over each reference's

CPU (3-5 minutes on the shared 2-core dev VM; a small size, for regressions):
  python benchmarks/bench_trainer.py --device cpu --threads 1 --width 16 --image-size 32 --images 1800 --epochs 2
H200, the default model and size (width 64, 96 px, batch 64, 4,500 + 500 images):
  python benchmarks/bench_trainer.py --device cuda
Results go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from stl_tune import config as C
from stl_tune.data import clear_cache, load_data, write_fake_stl10
from stl_tune.model import build_model
from stl_tune.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synctrace import SyncTrace  # noqa: E402  (the CPU sync counter the tests use)

DEFAULT = C.TrainConfig()
PROJECT_EPOCHS, PROJECT_MIX_EPOCHS = DEFAULT.optim.epochs, DEFAULT.augment.mix_epochs  # 200, 100
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


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


def reference(
    cfg: C.TrainConfig,
    device: torch.device,
    workers: int,
    amp: bool,
    epochs: int,
    on_epoch_end: Callable[[int], None] = lambda epoch: None,
) -> list[float]:
    """Seconds per epoch (training + evaluation) of the plain loop; amp: bf16 autocast,
    channels_last and fused AdamW."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed, "cpu")  # the trainer's images, on the host for the workers
    model = build_model(cfg.model, data.num_classes, data.mean, data.std).to(device)
    layout = torch.channels_last if amp else torch.contiguous_format
    model = model.to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=amp)

    def loader(x, y, transform, batch, shuffle):
        return DataLoader(
            PerImage(x, y, transform),
            batch_size=batch,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )

    train_loader = loader(
        data.train_x,
        data.train_y,
        reference_transform(cfg.augment, cfg.data.image_size),
        cfg.optim.batch_size,
        shuffle=True,
    )
    val_loader = loader(data.val_x, data.val_y, v2.ToDtype(torch.float32, scale=True), cfg.eval.batch_size, False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
            y = y.to(device, non_blocking=True)
            with autocast:
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad(), autocast:
            for x, y in val_loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
                logits = model(x).float() + model(x.flip(-1)).float()
                correct += (logits.argmax(1) == y.to(device, non_blocking=True)).sum()
        correct.item()  # the epoch's accuracy, read once
        seconds.append(time.perf_counter() - t0)
        on_epoch_end(epoch + 1)
    return seconds


# ------------------------------------------------------------------------------------ counting
class Counts:
    """Kernel launches (ATen ops on a CPU) and host syncs over a window of whole epochs:
    `with Counts(device) as c: ...; c.start(); ...; c.stop()`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.launches = self.syncs = 0

    def __enter__(self) -> Counts:
        if self.cuda:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self._prof = torch.profiler.profile(activities=activities)
        else:
            self._trace = SyncTrace(counting=False).__enter__()  # places tensors from the start
        return self

    def host(self, *tensors: torch.Tensor) -> None:
        """On a CPU, tell the counter these tensors live on the host (a DataLoader's dataset)."""
        if not self.cuda:
            self._trace.mark_host(*tensors)

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self._prof.start()
            torch.cuda.set_sync_debug_mode("warn")
        else:
            self._trace.start()

    def stop(self) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
            self._prof.stop()
            self.launches = sum(e.name in LAUNCH_CALLS for e in self._prof.events())
            self.syncs = sum("synchronizing CUDA operation" in str(w.message) for w in self._caught)
        else:
            self._trace.stop()
            self.launches, self.syncs = self._trace.ops, self._trace.syncs

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._warnings.__exit__(*exc)
        else:
            self._trace.__exit__(*exc)


def count_reference(cfg: C.TrainConfig, device: torch.device, workers: int, amp: bool) -> Counts:
    """Counts over the second epoch of a 2-epoch run of the plain loop."""
    data = load_data(cfg.data, cfg.seed, "cpu")  # the cached copy reference() reads
    with Counts(device) as counts:
        counts.host(data.images, data.labels, data.train, data.val)  # what reference() gathers from
        reference(cfg, device, workers, amp, 2, lambda epoch: counts.start() if epoch == 1 else counts.stop())
    return counts


def count_trainer(cfg: C.TrainConfig, device: torch.device) -> Counts:
    """Counts over epochs 2 (Mixup/CutMix) and 3 (plain) of a 3-epoch run of the trainer."""
    cfg = C.from_dict(C.to_dict(cfg), {"optim.epochs": 3, "augment.mix_epochs": 2})
    clear_cache()  # the data is read again under the counter, which then knows where it lives
    with Counts(device) as counts:
        train(cfg, lambda m: counts.start() if m.epoch == 1 else counts.stop() if m.epoch == 3 else None)
    return counts


# -------------------------------------------------------------------------------------- report
def flops_per_image(cfg: C.TrainConfig) -> float:
    """Forward+backward FLOPs of one training image (shapes only: counted on the meta device)."""
    with torch.device("meta"):
        model = build_model(cfg.model, 10).train()
        x = torch.empty(cfg.optim.batch_size, 3, cfg.data.image_size, cfg.data.image_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / cfg.optim.batch_size


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--width", type=int, default=DEFAULT.model.width, help="model.width")
    p.add_argument("--batch-size", type=int, default=DEFAULT.optim.batch_size)
    p.add_argument("--image-size", type=int, default=DEFAULT.data.image_size, help="pixels per side")
    p.add_argument("--images", type=int, default=4500, help="training images per epoch (plus 1/9 as many validated)")
    p.add_argument("--epochs", type=int, default=2, help="steady epochs timed per loop and phase, after 1 warm-up")
    p.add_argument(
        "--peak-tflops", type=float, default=790.0, help="bf16 peak, TFLOP/s (an H200's measured matmul: 790)"
    )
    # CPU: 0, since the same few cores run the model and workers would only take threads from it;
    # CUDA: 8 per GPU, the common recipe (the H200 machine has 16 cores).
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (cpu 0, cuda 8)")
    # On a shared CPU, 1: the many tiny ops of per-image augmentation run up to 8x slower when two
    # OpenMP threads spin against other jobs (measured at 32 px: 0.8 ms per image on 1 thread,
    # 6.7 ms on 2, under a load average of 8 on 2 cores).
    p.add_argument("--threads", type=int, default=None, help="torch threads for both loops (default: torch's)")
    p.add_argument("--no-counts", action="store_true", help="skip the launch and sync counting runs")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides; the references read model, augment, optim and eval from the same config",
    )
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    hardware = (
        torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"
    )
    figures: list[dict] = []

    def emit(row: str, figure: str, value: float | None, unit: str, note: str = "") -> None:
        line = {"row": row, "figure": figure, "value": value if value is None else round(value, 4), "unit": unit}
        line |= {"note": note} if note else {}
        figures.append(line)
        print(json.dumps(line), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        write_fake_stl10(tmp, train_per_class=math.ceil(args.images / 9), test_per_class=1)
        cfg = C.from_dict(
            None,
            {
                "data.dir": tmp,
                "data.image_size": args.image_size,
                "model.width": args.width,
                "optim.batch_size": args.batch_size,
                "runtime.device": args.device,
                **C.parse_overrides(args.set),
            },
        )
        data = load_data(cfg.data, cfg.seed, "cpu")
        n, steps = len(data.train_y), len(data.train_y) // cfg.optim.batch_size
        flops = flops_per_image(cfg)
        print(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "hardware": hardware,
                    "torch": torch.__version__,
                    "device": args.device,
                    "torch_threads": torch.get_num_threads(),
                    "reference_workers": workers,
                    "width": cfg.model.width,
                    "blocks": cfg.model.blocks,
                    "se": cfg.model.se,
                    "image_size": cfg.data.image_size,
                    "batch_size": cfg.optim.batch_size,
                    "train_images": n,
                    "val_images": len(data.val_y),
                    "steps_per_epoch": steps,
                    "gflop_per_train_image": round(flops / 1e9, 3),
                    "command": " ".join(sys.argv),
                }
            ),
            flush=True,
        )

        def report(row: str, first: float, steady: float, projection_s: float, peak_mem: float | None) -> float:
            rate = n / steady
            emit(row, "img_per_s", rate, "img/s")
            emit(row, "ms_per_step", 1000 * steady / steps, "ms")
            emit(row, "projection_min", projection_s / 60, "min", f"{PROJECT_EPOCHS} epochs of {n:,} images")
            emit(row, "first_epoch_s", first, "s")
            if cuda:
                emit(row, "peak_mem_gib", peak_mem, "GiB")
                emit(row, "bf16_peak_pct", 100 * rate * flops / (args.peak_tflops * 1e12), "%")
            return rate

        def counted(row: str, counts: Counts | None, window_steps: int) -> None:
            if counts is not None:
                what = "kernel launches (torch.profiler)" if cuda else "ATen ops (SyncTrace)"
                emit(row, "launches_per_step", counts.launches / window_steps, "1/step", what)
                how = "set_sync_debug_mode warnings" if cuda else "SyncTrace reads + blocking copies"
                emit(row, "syncs_per_step", counts.syncs / window_steps, "1/step", how)

        def peak_reset() -> None:
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)

        def peak() -> float | None:
            return torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

        rates = {}
        for row, amp in (("reference-fp32", False), ("reference-amp", True)):
            if amp and not cuda:
                emit(row, "img_per_s", None, "img/s", "n/a on a CPU: the trainer runs fp32, NCHW, unfused there too")
                continue
            peak_reset()
            seconds = reference(cfg, device, workers, amp, 1 + args.epochs)
            steady = mean(seconds[1:])
            rates[row] = report(row, seconds[0], steady, seconds[0] + (PROJECT_EPOCHS - 1) * steady, peak())
            counted(row, None if args.no_counts else count_reference(cfg, device, workers, amp), steps)

        peak_reset()
        timed = C.from_dict(
            C.to_dict(cfg),
            {
                "optim.epochs": 1 + 2 * args.epochs,
                "augment.mix_epochs": 1 + args.epochs,
            },
        )
        result = train(timed)
        seconds = [h["seconds"] for h in result.history]
        mixing, plain = mean(seconds[1 : 1 + args.epochs]), mean(seconds[1 + args.epochs :])
        projection = seconds[0] + (PROJECT_MIX_EPOCHS - 1) * mixing + (PROJECT_EPOCHS - PROJECT_MIX_EPOCHS) * plain
        rates["stl-tune"] = report("stl-tune", seconds[0], mean(seconds[1:]), projection, peak())
        emit("stl-tune", "ms_per_step_mixing", 1000 * mixing / steps, "ms")
        emit("stl-tune", "ms_per_step_plain", 1000 * plain / steps, "ms")
        emit("stl-tune", "compile_s", result.compile_seconds, "s")
        counted("stl-tune", None if args.no_counts else count_trainer(cfg, device), 2 * steps)
        for ref in [r for r in rates if r != "stl-tune"]:
            emit("stl-tune", f"ratio_to_{ref}", rates["stl-tune"] / rates[ref], "x")

    print(markdown(figures), file=sys.stderr)


def markdown(figures: list[dict]) -> str:
    """The figures as a table: one row per loop, one column per figure."""
    rows = list(dict.fromkeys(f["row"] for f in figures))
    cols = list(dict.fromkeys(f["figure"] for f in figures))
    value = {(f["row"], f["figure"]): f["value"] for f in figures}
    lines = ["| loop | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in rows:
        cells = [value.get((r, c)) for c in cols]
        lines.append(
            f"| {r} | "
            + " | ".join("" if v is None else f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" for v in cells)
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
