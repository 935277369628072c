"""The trainer: one TrainConfig in, one TrainResult out. It knows nothing about Optuna or storage.

Reads in pipeline order: device and compilation, schedules and optimizer, EMA, evaluation,
checkpoints, then the run: its parts built from the config, one state()/restore() pair (the
checkpoint), an epoch of training, the evaluations, and train() driving it epoch by epoch.
The dataset lives on the training device as uint8; each epoch is augmented there in large chunks
(stl_tune.augment), so the training step does no per-image Python work.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stl_tune import config as C
from stl_tune.augment import augment_images, make_mixer, mixing_active
from stl_tune.data import Dataset, load_data
from stl_tune.errors import UserError
from stl_tune.files import atomic_write
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
    # part of seconds: compiling the model at this epoch's first step (a compiled run's first
    # epoch, and a resumed run's), else 0; seconds - compile_seconds is the epoch's pace
    compile_seconds: float = 0.0


class TrainStatus(StrEnum):
    """How a run ended: TrainResult.status, written to metrics.json as its value."""

    COMPLETED = "completed"  # every epoch of optim.epochs
    EARLY_STOPPED = "early_stopped"  # eval.patience epochs without a better validation accuracy
    STOPPED = "stopped"  # on_epoch_end asked; the checkpoint (if any) resumes it
    DIVERGED = "diverged"  # the training loss became NaN or infinite

    @property
    def finished(self) -> bool:
        """Whether the run has nothing left to do: its outputs are final."""
        return self in (TrainStatus.COMPLETED, TrainStatus.EARLY_STOPPED)


@dataclass
class TrainResult:
    status: TrainStatus
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
    # Wall time of a compiled model's first training step, run to completion: compiling (or loading
    # from the cache) its forward and backward, plus one ordinary step (milliseconds). 0 when not
    # compiled. Part of `seconds` and of the first epoch's seconds.
    compile_seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # final (EMA) weights; not serialized

    def __post_init__(self) -> None:
        self.status = TrainStatus(self.status)  # read back from metrics.json as its value

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("model")
        return d


# ------------------------------------------------------------------------ device and compilation


def resolve_device(name: str) -> torch.device:
    """runtime.device as a torch.device, or a UserError naming what this process cannot have (a
    search worker sees its own GPU only, as cuda:0): check it before any trial."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"runtime.device={name} but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(
            f"runtime.device={name} but this process sees {n} GPU{'s' if n > 1 else ''} "
            f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})"
        )
    return device


def switched_on(setting: bool | str, device: torch.device) -> bool:
    """A runtime switch resolved (runtime.amp, channels_last, fused, compile): auto is on for CUDA,
    which the trainer is built for, and off on a CPU, where a first compile costs tens of seconds
    (see use_compile_cache) against runs of minutes; true and false hold on any device, so a CPU
    can run the CUDA branch (tests/test_train.py)."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def place_model(model: nn.Module, cfg: C.TrainConfig, device: torch.device) -> nn.Module:
    """The model on `device`, in channels_last layout where runtime.channels_last is on."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if switched_on(cfg.runtime.channels_last, device) else model


def use_compile_cache() -> Path:
    """Keep inductor's on-disk caches (compiled kernels, FX graphs, AOTAutograd graphs: all on by
    default) in ~/.cache/stl-tune/inductor rather than /tmp/torchinductor_<user>: a place that
    outlives a reboot and can be mounted into a container. A worker's next process then loads what
    an earlier one compiled; within one process a second model of the same architecture reuses the
    compiled code outright (docs/BENCHMARKS.md, "Inductor's compile cache": a first step from
    the disk cache takes seconds, a cold one far longer). A TORCHINDUCTOR_CACHE_DIR of the user's wins.

    Importing torch._dynamo already sets that variable to torch's /tmp default, which inductor
    reads at each use: ours replaces it only while it holds that default."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # private; torch has no public one

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "stl-tune" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


# ----------------------------------------------------------------------- schedules and optimizer


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
    linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(opt, [linear, cosine], milestones=[warmup])


# ------------------------------------------------------------------------------------------- EMA


class Ema:
    """An exponential moving average of a model's weights and buffers, kept in a copy of the model.

    Why not torch.optim.swa_utils.AveragedModel: it keeps its step counter as a CPU tensor and
    copies it to the device on every update (a pageable host-to-device copy waits for the stream),
    and a decay computed from that counter is a device tensor that _foreach_lerp_ reads back with
    .item(): host syncs in every step. Here the counter and the decay are Python numbers and the
    tensor lists are built once, so an update is one _foreach_lerp_ of the floating-point tensors
    and one _foreach_copy_ of the integer ones (BatchNorm's num_batches_tracked), both queued
    without waiting for the device. BatchNorm's running statistics are averaged like the weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool):
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        pairs = zip([*self.module.parameters(), *self.module.buffers()], [*model.parameters(), *model.buffers()])
        floats, others = [], []
        for ema, current in pairs:
            (floats if ema.is_floating_point() else others).append((ema, current.detach()))
        self._floats = [list(t) for t in zip(*floats)]  # [ema tensors, model tensors]
        self._others = [list(t) for t in zip(*others)]

    def decay_at(self, n: int) -> float:
        """The decay of the update after n updates: 0 for the first (a copy, as AveragedModel
        does), then min(decay, (1+n)/(10+n)) with warm-up, so the random initial weights fade
        within the first few hundred steps, or the plain decay without."""
        if n == 0:
            return 0.0
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(*self._floats, 1.0 - self.decay_at(self.updates))  # weight 1: an exact copy
        if self._others:
            torch._foreach_copy_(*self._others)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, cfg: C.TrainConfig, device: torch.device, index: Tensor | None = None
) -> Tensor:
    """float32 logits [N, classes] of uint8 images x [N,3,S,S] (or of x[index]: read a batch at a
    time, never copied whole); with eval.tta, the mean of each image's and its mirror's."""
    model.eval()
    out = []
    batches = x.split(cfg.eval.batch_size) if index is None else (x[i] for i in index.split(cfg.eval.batch_size))
    for xb in batches:
        xb = _to_input(xb.float().div_(255), cfg, device)
        with _autocast(cfg, device):
            logits = model(xb).float()
            if cfg.eval.tta:
                logits = (logits + model(xb.flip(-1)).float()) / 2
        out.append(logits)
    return torch.cat(out)


@torch.no_grad()
def predict(
    model: nn.Module, x: Tensor, cfg: C.TrainConfig, device: torch.device, index: Tensor | None = None
) -> Tensor:
    """Class predictions for uint8 images x (or x[index]), averaging the logits of each image and its mirror."""
    if (len(x) if index is None else len(index)) == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    return predict_logits(model, x, cfg, device, index).argmax(1)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def accuracy(pred: Tensor, target: Tensor) -> float:
    """The share of predictions that match, as a count divided by n in Python: exactly the float
    nearest to k/n (0.42, not float32's 0.41999998688697815), as an objective value is stored."""
    return int((pred == target).sum()) / len(target)


def per_class_accuracy(cm: Tensor) -> list[float]:
    """Each true class's recall from a confusion matrix (rows: true class), counts divided in Python
    as accuracy() does; 0 for an absent class."""
    return [hits / max(n, 1) for hits, n in zip(cm.diag().tolist(), cm.sum(1).tolist())]


def _to_input(x: Tensor, cfg: C.TrainConfig, device: torch.device) -> Tensor:
    if switched_on(cfg.runtime.channels_last, device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(cfg: C.TrainConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=switched_on(cfg.runtime.amp, device))


# ----------------------------------------------------------------------------------- checkpoints


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a reader (or a resume after kill -9) never sees a half-written file."""
    with atomic_write(path) as f:
        torch.save(state, f)


def _load_checkpoint(path: Path, cfg: C.TrainConfig) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or not written by torch.save
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if recipe_of(state.get("config", {})) != recipe_of(C.to_dict(cfg)):
        raise UserError(f"checkpoint {path} was written for a different config; remove it to start over")
    return state


def recipe_of(d: dict) -> dict:
    """A config dict less where things are (data.dir, runtime device and the like): a retry on
    another host, with the data mounted elsewhere or on another GPU, resumes the same run."""
    return {k: v for k, v in d.items() if k != "runtime"} | {
        "data": {k: v for k, v in d.get("data", {}).items() if k != "dir"}
    }


# ------------------------------------------------------------------------------------- the run


# uint8 image bytes per augmentation call when runtime.augment_chunk_mib is 0 (auto), in MiB. On
# CUDA, 4,096 images at 96 px per call amortise the per-op kernel launches; on a CPU, 512 keep a
# chunk in cache, which is faster (docs/BENCHMARKS.md, "Augmentation chunk on a CPU"). Bytes, not
# images: a call's working set grows with the pixels (the crop's int64 index alone is 8 bytes a
# pixel: 1.6 GB for 4,096 images at 224 px).
CHUNK_MIB = {"cuda": 4096 * 3 * 96 * 96 / 2**20, "cpu": 512 * 3 * 96 * 96 / 2**20}  # 108, 13.5


def chunk_images(cfg: C.TrainConfig, image_bytes: int, device: torch.device) -> int:
    """Images per augmentation call: the whole batches of `image_bytes` each that the byte budget
    holds, at least one batch."""
    mib = cfg.runtime.augment_chunk_mib or CHUNK_MIB["cuda" if device.type == "cuda" else "cpu"]
    batch = cfg.optim.batch_size
    return batch * max(1, int(mib * 2**20) // (image_bytes * batch))


def _epoch_batches(data: Dataset, cfg: C.TrainConfig, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled, augmented (x in [0,1], y) batches for one epoch, augmented a chunk at a time
    (chunk_images); the last partial batch is dropped (BatchNorm dislikes tiny batches)."""
    batch = cfg.optim.batch_size
    steps = len(data.train) // batch
    order = data.train[torch.randperm(len(data.train), device=device)[: steps * batch]]  # into data.images
    chunk = chunk_images(cfg, data.images.shape[1:].numel(), device)
    for start in range(0, len(order), chunk):
        idx = order[start : start + chunk]
        x = augment_images(data.images[idx], cfg.augment)
        yield from zip(x.split(batch), data.labels[idx].split(batch))


class _Run:
    """One training run, in the manner of a torchtune recipe: its parts built from the config
    (__init__), the one state dict a checkpoint holds (state / restore), an epoch of training, and
    the evaluations. train() below drives it."""

    def __init__(self, cfg: C.TrainConfig, evaluate_test: bool):
        self.cfg = cfg
        self.device = device = resolve_device(cfg.runtime.device)
        torch.manual_seed(cfg.seed)  # seeds the CPU and every CUDA generator
        self.data = data = load_data(cfg.data, cfg.seed, device, with_test=evaluate_test)
        self.val_y = data.labels[data.val]
        batch = cfg.optim.batch_size
        self.steps_per_epoch = len(data.train) // batch
        if self.steps_per_epoch == 0:
            raise UserError(f"optim.batch_size={batch} exceeds the {len(data.train)} training images")

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are fixed: time the conv algorithms once, keep the best
        self.model = place_model(build_model(cfg.model, data.num_classes, data.mean, data.std), cfg, device)
        self.ema = Ema(self.model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
        self.opt = make_optimizer(self.model, cfg.optim, fused=switched_on(cfg.runtime.fused, device))
        self.sched = make_scheduler(self.opt, cfg.optim, self.steps_per_epoch)
        self.step_model: nn.Module = self.model  # what a step calls: the model, or its compiled form
        self.compile_pending = switched_on(cfg.runtime.compile, device)  # compiled at the first step
        if self.compile_pending:
            use_compile_cache()
        self.compile_seconds = 0.0
        self.mix = make_mixer(data.num_classes, cfg.augment)
        self.eval_model = self.ema.module if self.ema is not None else self.model

        # the loop's counters: with the parts' own states, all a checkpoint holds
        self.epoch = 0  # epochs finished
        self.history: list[dict] = []  # asdict(EpochMetrics) per epoch
        self.best: float | None = None  # best validation accuracy so far
        self.best_epoch = 0

    # ------------------------------------------------------------------------- checkpoint state
    def state(self) -> dict:
        """Everything a resume needs, as tensors and plain values (loadable with weights_only=True)."""
        cuda = self.device.type == "cuda"
        return {
            "config": C.to_dict(self.cfg),
            "epoch": self.epoch,
            "history": self.history,
            "best_val_acc": self.best,
            "best_epoch": self.best_epoch,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            # a ByteTensor, empty on a CPU, as torch.cuda.set_rng_state takes no other type
            "rng_cuda": torch.cuda.get_rng_state(self.device) if cuda else torch.empty(0, dtype=torch.uint8),
        }

    def restore(self, state: dict) -> None:
        """The inverse of state(): the run continues exactly where that state was taken."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_cpu"])
        # Written on a CPU, a checkpoint has no CUDA state (earlier ones: an empty float tensor): on
        # a GPU the run then goes on from the CUDA generator seeded in __init__.
        if self.device.type == "cuda" and state["rng_cuda"].numel() > 0:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.epoch, self.history = state["epoch"], state["history"]
        self.best, self.best_epoch = state["best_val_acc"], state["best_epoch"]

    # ---------------------------------------------------------------------------------- epochs
    def train_epoch(self, smoothing: float) -> float:
        """One epoch of optimizer steps at this label smoothing; the mean training loss. The loss
        is summed on the device: one host sync per epoch."""
        self.model.train()
        mixing = mixing_active(self.epoch, self.cfg.augment)
        loss_sum = torch.zeros((), device=self.device)
        for xb, yb in _epoch_batches(self.data, self.cfg, self.device):
            target: Tensor = yb
            if mixing:
                xb, target = self.mix(xb, yb)
            if self.compile_pending:
                loss = self._compile_and_forward_backward(xb, target, smoothing)
            else:
                loss = self._forward_backward(xb, target, smoothing)
            self._update()
            loss_sum += loss
        self.epoch += 1
        return loss_sum.item() / self.steps_per_epoch

    def _forward_backward(self, x: Tensor, target: Tensor, smoothing: float) -> Tensor:
        """Gradients of one batch; its loss, detached, still on the device."""
        with _autocast(self.cfg, self.device):
            logits = self.step_model(_to_input(x, self.cfg, self.device))
        loss = F.cross_entropy(logits.float(), target, label_smoothing=smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def _compile_and_forward_backward(self, x: Tensor, target: Tensor, smoothing: float) -> Tensor:
        """The run's first step when compiling: torch.compile compiles the forward at the first
        call and the backward at the first backward, so this step, run to completion, is timed as
        compile_seconds. If compiling fails: one warning, and the run goes on eagerly (a failure in
        the backward has run the compiled forward once: BatchNorm's statistics saw that batch twice)."""
        self.compile_pending = False
        t0 = time.perf_counter()
        try:
            # Start clean: compiled code of a worker's earlier trials would pile up to dynamo's
            # recompile limit (8 per function), past which it runs eagerly with only a log line. A
            # repeated architecture comes back from the disk cache (docs/BENCHMARKS.md, "Inductor's
            # compile cache").
            torch.compiler.reset()
            # Shapes are fixed. By default a second architecture in one process (another width)
            # would be recompiled with symbolic shapes; dynamic=False compiles it for its sizes.
            self.step_model = torch.compile(self.model, dynamic=False)
            loss = self._forward_backward(x, target, smoothing)
        except torch.cuda.OutOfMemoryError:  # not a compile failure: eager would not fit either
            raise
        except Exception as e:  # e.g. BackendCompilerFailed: no C compiler, an unsupported op
            reason = " ".join(str(e).strip().split("\n\n")[0].split())[:300]  # dynamo's first paragraph
            warnings.warn(f"torch.compile failed, training without it: {type(e).__name__}: {reason}", stacklevel=2)
            self.step_model = self.model
            return self._forward_backward(x, target, smoothing)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # once per run: the step's compile time, not its launch
        self.compile_seconds = time.perf_counter() - t0
        return loss

    def _update(self) -> None:
        """Apply the gradients: clipping, optimizer, LR schedule, EMA."""
        if self.cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update()

    def validate(self) -> float | None:
        """Validation accuracy of the evaluated (EMA) weights, remembering the best; None without
        a validation split."""
        if len(self.val_y) == 0:
            return None
        pred = predict(self.eval_model, self.data.images, self.cfg, self.device, self.data.val)
        acc = accuracy(pred, self.val_y)
        if self.best is None or acc > self.best:
            self.best, self.best_epoch = acc, self.epoch
        return acc

    def patience_spent(self) -> bool:
        patience = self.cfg.eval.patience
        return len(self.val_y) > 0 and patience > 0 and self.epoch - self.best_epoch >= patience

    def final_evaluation(self, result: TrainResult, on_test: bool) -> None:
        """Confusion matrix and per-class accuracy on test (on_test) or validation, and the test accuracy."""
        data = self.data
        x, y, index = (data.test_x, data.test_y, None) if on_test else (data.images, self.val_y, data.val)
        if x is None or len(y) == 0:
            return
        pred = predict(self.eval_model, x, self.cfg, self.device, index)
        cm = confusion_matrix(pred, y, data.num_classes)
        result.confusion = cm.tolist()
        result.per_class_acc = per_class_accuracy(cm)
        if on_test:
            result.test_acc = accuracy(pred, y)


def train(
    cfg: C.TrainConfig,
    on_epoch_end: Callable[[EpochMetrics], bool | None] | None = None,
    *,
    checkpoint: str | Path | None = None,
    evaluate_test: bool = False,
    checkpoint_now: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train `cfg` and return its result.

    on_epoch_end(metrics) runs after every epoch, after that epoch's checkpoint (if
    metrics.checkpointed) is on disk; it returns True to stop the run. If `checkpoint` exists, the
    run resumes from it exactly. checkpoint_now(), asked at each epoch's end, forces a checkpoint
    there besides the ones every runtime.checkpoint_interval_s (a search's deadline has passed).
    Test images are loaded and scored only with evaluate_test=True (final training).
    """
    C.validate(cfg)
    t_start = time.perf_counter()
    run = _Run(cfg, evaluate_test)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = _load_checkpoint(ckpt, cfg)
        try:
            run.restore(state)
        except (KeyError, RuntimeError, ValueError):  # other keys or shapes: another trainer version
            raise UserError(
                f"checkpoint {ckpt} was written by another version of stl-tune; remove it to start over"
            ) from None
    result = TrainResult(
        status=TrainStatus.COMPLETED,
        epochs_run=run.epoch,
        best_val_acc=run.best,
        val_acc=None,
        history=run.history,
        classes=run.data.classes,
        param_count=param_count(run.model),
        device=str(run.device),
        resumed_from_epoch=run.epoch,
    )
    if run.patience_spent():  # resumed from the checkpoint of an early-stopped run
        result.status = TrainStatus.EARLY_STOPPED

    last_save = -math.inf
    while result.status == TrainStatus.COMPLETED and run.epoch < cfg.optim.epochs:
        t0, compiled_before = time.perf_counter(), run.compile_seconds
        smoothing = label_smoothing_at(run.epoch, cfg)
        train_loss = run.train_epoch(smoothing)
        result.epochs_run = run.epoch
        if not math.isfinite(train_loss):
            result.status, result.diverged_epoch = TrainStatus.DIVERGED, run.epoch
            break
        val_acc = run.validate()
        result.best_val_acc, result.val_acc = run.best, val_acc
        if run.patience_spent():
            result.status = TrainStatus.EARLY_STOPPED
        # A checkpoint is ~16 bytes per parameter (weights, EMA, two AdamW moments): 180 MB at
        # width 64, too much to write every 0.5-s GPU epoch. Saving at most every
        # checkpoint_interval_s, and at the end, bounds both the cost and the work a crash loses.
        save = ckpt is not None and (
            time.perf_counter() - last_save >= cfg.runtime.checkpoint_interval_s
            or run.epoch == cfg.optim.epochs
            or result.status != TrainStatus.COMPLETED
            or (checkpoint_now is not None and checkpoint_now())
        )
        metrics = EpochMetrics(
            epoch=run.epoch,
            train_loss=train_loss,
            val_acc=val_acc,
            lr=run.sched.get_last_lr()[0],
            label_smoothing=smoothing,
            seconds=time.perf_counter() - t0,
            checkpointed=save,
            compile_seconds=run.compile_seconds - compiled_before,
        )
        run.history.append(asdict(metrics))
        if save:
            last_save = time.perf_counter()
            _save_checkpoint(ckpt, run.state())
        if on_epoch_end is not None and on_epoch_end(metrics):
            result.status = TrainStatus.STOPPED

    if result.status != TrainStatus.DIVERGED:
        run.final_evaluation(result, on_test=evaluate_test)
    result.seconds = time.perf_counter() - t_start
    result.compile_seconds = run.compile_seconds
    result.model = run.eval_model
    return result
