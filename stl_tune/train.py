"""The trainer: one TrainConfig in, one TrainResult out. It knows nothing about Optuna or storage.

Reads in pipeline order: device and seeding, schedules, optimizer, evaluation, checkpoints, the loop.
The dataset lives on the training device as uint8; each epoch is augmented there in large chunks
(stl_tune.augment), so the training step does no per-image Python work.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from stl_tune import config as C
from stl_tune.augment import augment_images, make_mixer, mixing_active
from stl_tune.data import Dataset, load_data
from stl_tune.errors import UserError
from stl_tune.model import build_model, param_count

# ------------------------------------------------------------------------------------ results


@dataclass
class EpochMetrics:
    epoch: int  # epochs finished, 1-based
    train_loss: float  # mean over the epoch's steps
    val_acc: float | None  # EMA weights + flip TTA, in [0, 1]; None when training on train+val
    lr: float  # at the epoch's last step
    label_smoothing: float
    seconds: float  # wall time of this epoch's training and evaluation
    checkpointed: bool  # the resume checkpoint was written after this epoch


@dataclass
class TrainResult:
    status: str  # completed | early_stopped | stopped (the callback asked) | diverged
    epochs_run: int
    best_val_acc: float | None  # what the search maximizes
    val_acc: float | None  # at the last epoch
    history: list[dict] = field(default_factory=list)  # asdict(EpochMetrics) per epoch
    test_acc: float | None = None  # only with evaluate_test=True
    per_class_acc: list[float] | None = None  # on test when evaluated, else on validation
    confusion: list[list[int]] | None = None  # rows: true class, columns: predicted
    classes: list[str] = field(default_factory=list)
    diverged_epoch: int | None = None
    seconds: float = 0.0
    param_count: int = 0
    device: str = "cpu"
    resumed_from_epoch: int = 0  # 0 for a fresh run
    model: nn.Module | None = field(default=None, repr=False)  # final (EMA) weights; not serialized

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# ------------------------------------------------------------------------ device and schedules


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def label_smoothing_at(epoch: int, cfg: C.TrainConfig) -> float:
    """Label smoothing for a 0-based epoch: start -> end over training, scaled while mixing."""
    s = cfg.smoothing
    t = epoch / max(1, cfg.optim.epochs - 1)  # 0 at the first epoch, 1 at the last
    if s.shape == "constant":
        value = s.start
    elif s.shape == "linear":
        value = s.start + (s.end - s.start) * t
    else:  # cosine: flat at both ends, fastest change mid-run
        value = s.end + (s.start - s.end) * 0.5 * (1 + math.cos(math.pi * t))
    return value * s.mix_scale if mixing_active(epoch, cfg.augment) else value


def make_optimizer(model: nn.Module, cfg: C.OptimConfig, fused: bool) -> torch.optim.Optimizer:
    # Norm weights and biases (all 1-D parameters) carry no weight decay.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)
    nesterov = cfg.nesterov and cfg.momentum > 0  # torch refuses Nesterov without momentum
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, fused=fused)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: C.OptimConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine annealing to 0, stepped once per optimizer step."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup)
    if warmup == 0:
        return cosine
    linear = torch.optim.lr_scheduler.LinearLR(
        opt, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=warmup
    )
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


def ema_multi_avg_fn(decay: float, warmup: bool) -> Callable:
    """torch.optim.swa_utils' EMA update plus the warm-up it lacks: the decay ramps as
    min(decay, (1+n)/(10+n)), so the random initial weights fade within the first few hundred
    steps. The decay stays a device tensor, adding no host sync (AveragedModel itself copies its
    CPU step counter to the device once per update: to be measured on a GPU)."""

    def update(ema: list[Tensor], current: list[Tensor], n_averaged: Tensor) -> None:
        if not torch.is_floating_point(ema[0]):  # BatchNorm's step counters: just follow
            torch._foreach_copy_(ema, current)
            return
        d = torch.clamp((1 + n_averaged) / (10 + n_averaged), max=decay) if warmup else decay
        torch._foreach_lerp_(ema, current, 1 - d)

    return update


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, cfg: C.TrainConfig, device: torch.device) -> Tensor:
    """Class predictions for uint8 images, averaging the logits of each image and its mirror."""
    model.eval()
    preds = []
    for xb in x.split(cfg.eval.batch_size):
        xb = _to_input(xb.float().div_(255), cfg, device)
        with _autocast(cfg, device):
            logits = model(xb).float()
            if cfg.eval.tta:
                logits += model(xb.flip(-1)).float()
        preds.append(logits.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def _to_input(x: Tensor, cfg: C.TrainConfig, device: torch.device) -> Tensor:
    if device.type == "cuda" and cfg.runtime.channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(cfg: C.TrainConfig, device: torch.device) -> torch.autocast:
    enabled = device.type == "cuda" and cfg.runtime.amp
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ----------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a reader (or a resume after kill -9) never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, cfg: C.TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or not written by torch.save
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if _recipe(state.get("config", {})) != _recipe(C.to_dict(cfg)):
        raise UserError(f"checkpoint {path} was written for a different config; remove it to start over")
    return state


def _recipe(d: dict) -> dict:
    """A config dict less where things are (data.dir, runtime device and the like): a retry on
    another host, with the data mounted elsewhere or on another GPU, resumes the same run."""
    return {k: v for k, v in d.items() if k != "runtime"} | {
        "data": {k: v for k, v in d.get("data", {}).items() if k != "dir"}
    }


# ------------------------------------------------------------------------------------- the loop


def _epoch_batches(data: Dataset, cfg: C.TrainConfig, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled, augmented (x in [0,1], y) batches for one epoch; the last partial batch is
    dropped (BatchNorm dislikes tiny batches). On CUDA, ~4k images per augmentation call amortise
    the per-op kernel launches; on a CPU, ~512 keep a chunk in cache (measured ~2x faster)."""
    batch = cfg.optim.batch_size
    steps = len(data.train_y) // batch
    order = torch.randperm(len(data.train_y), device=device)[: steps * batch]
    chunk = batch * max(1, (4096 if device.type == "cuda" else 512) // batch)
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        x = augment_images(data.train_x[idx], cfg.augment)
        yield from zip(x.split(batch), data.train_y[idx].split(batch))


def train(
    cfg: C.TrainConfig,
    on_epoch_end: Callable[[EpochMetrics], bool | None] | None = None,
    *,
    checkpoint: str | Path | None = None,
    evaluate_test: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train `cfg` and return its result.

    on_epoch_end(metrics) runs after every epoch, after that epoch's checkpoint (if
    metrics.checkpointed) is on disk; it returns True to stop the run. If `checkpoint` exists, the
    run resumes from it exactly.
    Test images are loaded and scored only with evaluate_test=True (final training).
    """
    C.validate(cfg)
    t_start = time.perf_counter()
    device = resolve_device(cfg.runtime.device)
    torch.manual_seed(cfg.seed)  # seeds the CPU and every CUDA generator
    data = load_data(cfg.data, cfg.seed, device, with_test=evaluate_test)
    batch = cfg.optim.batch_size
    steps_per_epoch = len(data.train_y) // batch
    if steps_per_epoch == 0:
        raise UserError(f"optim.batch_size={batch} exceeds the {len(data.train_y)} training images")
    has_val = len(data.val_y) > 0

    model = build_model(cfg.model, data.num_classes, data.mean, data.std).to(device)
    if device.type == "cuda" and cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = (
        AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(cfg.ema.decay, cfg.ema.warmup), use_buffers=True)
        if cfg.ema.enabled
        else None
    )
    opt = make_optimizer(model, cfg.optim, fused=device.type == "cuda")
    sched = make_scheduler(opt, cfg.optim, steps_per_epoch)
    step_model = torch.compile(model) if cfg.runtime.compile else model
    mix = make_mixer(data.num_classes, cfg.augment)
    eval_model = ema.module if ema is not None else model

    start_epoch, history, best, best_epoch = 0, [], None, 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = _load_checkpoint(ckpt, cfg)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start_epoch, history = state["epoch"], state["history"]
        best, best_epoch = state["best_val_acc"], state["best_epoch"]

    result = TrainResult(
        status="completed", epochs_run=start_epoch, best_val_acc=best, val_acc=None,
        history=history, classes=data.classes, param_count=param_count(model),
        device=str(device), resumed_from_epoch=start_epoch,
    )  # fmt: skip

    def patience_spent(epochs_done: int) -> bool:
        return has_val and cfg.eval.patience > 0 and epochs_done - best_epoch >= cfg.eval.patience

    if patience_spent(start_epoch):  # resumed from the checkpoint of an early-stopped run
        result.status = "early_stopped"
    bar = _ProgressBar(cfg.optim.epochs, start_epoch) if progress else None
    last_save = -math.inf
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            if result.status != "completed":
                break
            t0 = time.perf_counter()
            model.train()
            smoothing = label_smoothing_at(epoch, cfg)
            mixing = mixing_active(epoch, cfg.augment)
            loss_sum = torch.zeros((), device=device)  # summed on device: one host sync per epoch
            for xb, yb in _epoch_batches(data, cfg, device):
                target: Tensor = yb
                if mixing:
                    xb, target = mix(xb, yb)
                with _autocast(cfg, device):
                    logits = step_model(_to_input(xb, cfg, device))
                loss = F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.detach()
            train_loss = loss_sum.item() / steps_per_epoch
            result.epochs_run = epoch + 1
            if not math.isfinite(train_loss):
                result.status, result.diverged_epoch = "diverged", epoch + 1
                break

            val_acc = None
            if has_val:
                val_acc = (predict(eval_model, data.val_x, cfg, device) == data.val_y).float().mean().item()
                if best is None or val_acc > best:
                    best, best_epoch = val_acc, epoch + 1
            result.best_val_acc, result.val_acc = best, val_acc
            if patience_spent(epoch + 1):
                result.status = "early_stopped"
            # A checkpoint is ~16 bytes per parameter (weights, EMA, two AdamW moments): 180 MB at
            # width 64, too much to write every 0.5-s GPU epoch. Saving at most every
            # checkpoint_interval_s, and at the end, bounds both the cost and the work a crash loses.
            save = ckpt is not None and (
                time.perf_counter() - last_save >= cfg.runtime.checkpoint_interval_s
                or epoch + 1 == cfg.optim.epochs or result.status != "completed"
            )  # fmt: skip
            metrics = EpochMetrics(
                epoch=epoch + 1, train_loss=train_loss, val_acc=val_acc,
                lr=sched.get_last_lr()[0], label_smoothing=smoothing,
                seconds=time.perf_counter() - t0, checkpointed=save,
            )  # fmt: skip
            history.append(asdict(metrics))
            if save:
                last_save = time.perf_counter()
                _save_checkpoint(ckpt, {
                    "config": C.to_dict(cfg), "epoch": epoch + 1, "history": history,
                    "best_val_acc": best, "best_epoch": best_epoch,
                    "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0),
                })  # fmt: skip
            if bar is not None:
                bar.update(metrics)
            if on_epoch_end is not None and on_epoch_end(metrics):
                result.status = "stopped"
    finally:
        if bar is not None:
            bar.close()

    eval_x, eval_y = (data.test_x, data.test_y) if evaluate_test else (data.val_x, data.val_y)
    if result.status != "diverged" and eval_x is not None and len(eval_y) > 0:
        pred = predict(eval_model, eval_x, cfg, device)
        cm = confusion_matrix(pred, eval_y, data.num_classes)
        result.confusion = cm.tolist()
        result.per_class_acc = (cm.diag() / cm.sum(1).clamp(min=1)).tolist()
        if evaluate_test:
            result.test_acc = (pred == eval_y).float().mean().item()
    result.seconds = time.perf_counter() - t_start
    result.model = eval_model
    return result


class _ProgressBar:
    """A rich progress bar: epoch, loss, validation accuracy and time left."""

    def __init__(self, epochs: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch"), MofNCompleteColumn(), BarColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[acc]}"), TimeRemainingColumn(),
        )  # fmt: skip
        self.task = self.progress.add_task("train", total=epochs, completed=start, loss="-", acc="-")
        self.progress.start()

    def update(self, m: EpochMetrics) -> None:
        acc = "-" if m.val_acc is None else f"{m.val_acc:.2%}"
        self.progress.update(self.task, advance=1, loss=f"{m.train_loss:.3f}", acc=acc)

    def close(self) -> None:
        self.progress.stop()
