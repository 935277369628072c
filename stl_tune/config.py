"""The one config schema: nested dataclasses whose defaults are the known 89.4 % STL-10 run.

Everything speaks this schema: `stl-tune train`, study files (dotted paths into it), the resolved
config stored with every trial, and exported final-training configs. Defaults live here only.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from stl_tune.errors import UserError


class ConfigError(UserError):
    """A bad config key or value."""


# ---------------------------------------------------------------------------------------- schema
def bounded(default: float, lo: float, hi: float | None = None) -> Any:
    """A numeric field with its inclusive range [lo, hi] (hi None: no upper bound), checked by validate()."""
    return field(default=default, metadata={"range": (lo, hi)})


@dataclass
class DataConfig:
    # auto: found from data.dir's tree (stl_tune/data/splits.py, found_source): class sub-folders or
    # train/ val/ test/ are a folder dataset; stl10_binary/, or nothing yet, is STL-10 (downloaded).
    # Saved configs (config.yaml, trial records, exports) keep "auto" as written: like data.dir, the
    # source is a fact of the host's tree, resolved again wherever the config runs.
    source: Literal["auto", "stl10", "folder"] = "auto"
    dir: str = "data"  # STL-10: holds stl10_binary/ (downloaded when missing); folder: the class folders
    image_size: int = bounded(96, 8, 1024)  # pixels per side; folder images are resized to it (STL-10: 96)
    val_fraction: float = bounded(0.1, 0.0, 0.5)  # share of labelled training images held out, stratified
    test_fraction: float = bounded(0.2, 0.0, 0.5)  # class-layout folders only: share held out as test
    train_on_val: bool = False  # final model: train on train+validation (no validation accuracy)


@dataclass
class ModelConfig:
    width: int = bounded(64, 1, 1024)  # channels of the first stage; stages are w-2w-4w-8w
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # BasicBlocks per stage
    stem_stride: int = bounded(1, 1, 4)  # 3x3 stem, no max-pool; 2 quarters the compute of every later layer
    se: bool = True  # Squeeze-Excitation in every block
    se_reduction: int = bounded(16, 1, 1024)  # SE bottleneck = channels / se_reduction
    drop_path: float = bounded(0.1, 0.0, 0.9)  # stochastic-depth rate of the deepest block; rises from 0


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = bounded(1e-3, 1e-8, 10.0)  # peak learning rate, reached at the end of warm-up
    weight_decay: float = bounded(0.05, 0.0, 1.0)  # decoupled (AdamW) or L2 (SGD); never on norms or biases
    momentum: float = bounded(0.9, 0.0, 0.999)  # SGD only
    nesterov: bool = True  # SGD only
    epochs: int = bounded(200, 1, 10_000)
    batch_size: int = bounded(64, 2, 8192)
    warmup_epochs: float = bounded(5.0, 0.0, 10_000)  # linear from lr * warmup_start to lr, then cosine to 0
    warmup_start: float = bounded(0.01, 1e-4, 1.0)  # first-step learning rate as a share of lr
    grad_clip: float = bounded(0.0, 0.0)  # max global gradient norm; 0 turns clipping off


@dataclass
class AugmentConfig:
    crop_padding: int = bounded(12, 0, 64)  # random crop after reflect-padding this many pixels per side
    flip: bool = True  # random horizontal flip
    randaugment_ops: int = bounded(2, 0, 14)  # RandAugment ops per image (each draws its own); 0 turns it off
    randaugment_magnitude: int = bounded(9, 0, 30)  # RandAugment strength, 0..30 as in torchvision
    mixup_alpha: float = bounded(0.8, 0.0, 10.0)  # Beta(alpha, alpha) for Mixup; 0 disables Mixup
    cutmix_alpha: float = bounded(1.0, 0.0, 10.0)  # Beta(alpha, alpha) for CutMix; 0 disables CutMix
    cutmix_prob: float = bounded(0.5, 0.0, 1.0)  # chance a batch uses CutMix rather than Mixup when both are on
    mix_epochs: int = bounded(100, 0, 10_000)  # Mixup/CutMix (soft-target CE) for the first K epochs, then CE


@dataclass
class SmoothingConfig:
    shape: Literal["constant", "linear", "cosine"] = "linear"  # how it moves from start to end
    start: float = bounded(0.1, 0.0, 0.5)  # label smoothing at epoch 0
    end: float = bounded(0.0, 0.0, 0.5)  # label smoothing at the last epoch (lowered as training converges)
    mix_scale: float = bounded(0.5, 0.0, 1.0)  # multiplier while Mixup/CutMix is on: mixed labels are soft


@dataclass
class EmaConfig:
    enabled: bool = True
    decay: float = bounded(0.999, 0.0, 0.99999)  # per optimizer step
    warmup: bool = True  # decay ramps as min(decay, (1+n)/(10+n)) so early weights fade fast


@dataclass
class EvalConfig:
    tta: bool = True  # average logits of the image and its horizontal flip
    patience: int = bounded(40, 0)  # early stopping: epochs without a better validation accuracy; 0 = off
    batch_size: int = bounded(500, 1, 100_000)  # images per evaluation batch


Switch = Literal["auto", True, False]  # auto: on for CUDA, off on a CPU; true or false on any device


@dataclass
class RuntimeConfig:
    """Where and how a run executes, not what it learns: a checkpoint resumes under other values."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: Switch = "auto"  # bf16 autocast of the forward pass
    channels_last: Switch = "auto"  # NHWC memory layout of the model and its input
    fused: Switch = "auto"  # the optimizer's fused kernel (torch.optim's fused=True)
    compile: Switch = "auto"  # torch.compile the model
    # uint8 image bytes augmented per call, in MiB; 0 = auto: 108 on CUDA (4,096 images at 96 px),
    # 13.5 on a CPU (512 at 96 px); at least one batch either way (stl_tune.train.chunk_images)
    augment_chunk_mib: float = bounded(0.0, 0.0, 65536.0)
    # resume checkpoint at most this often (and at the end); 0 = every epoch
    checkpoint_interval_s: float = bounded(30.0, 0.0)


@dataclass
class TrainConfig:
    seed: int = bounded(0, 0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ------------------------------------------------------------------------------ paths and types
def _leaves(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf field as {"a.b": (type, field)}, in declaration order."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_leaves(hints[f.name], path + "."))
        else:
            out[path] = (hints[f.name], f)
    return out


# Cached (the schema never changes at run time): do not modify the returned dicts.
@functools.cache
def field_types() -> dict[str, Any]:
    """{"a.b": type} of every leaf field, e.g. {"model.width": int, "optim.name": Literal[...]}."""
    return {path: tp for path, (tp, _) in _leaves().items()}


@functools.cache
def field_ranges() -> dict[str, tuple[float, float | None]]:
    """{"a.b": (lo, hi)} of every field declared with bounded()."""
    return {path: f.metadata["range"] for path, (_, f) in _leaves().items() if "range" in f.metadata}


def nearest_key(key: str, choices: list[str]) -> str:
    """' (did you mean X?)' for an unknown key, or '' when nothing is close."""
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    if not close:  # also try the last path part alone: "width" -> "model.width"
        tails = {c.rsplit(".", 1)[-1]: c for c in choices}
        tail = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.7)
        close = [tails[tail[0]]] if tail else []
    return f" (did you mean {close[0]}?)" if close else ""


def check_path(path: str) -> Any:
    """The type of a dotted config path, or a ConfigError naming the nearest valid one."""
    types_ = field_types()
    if path not in types_:
        raise ConfigError(f"unknown config key '{path}'{nearest_key(path, sorted(types_))}")
    return types_[path]


def coerce(path: str, value: Any, tp: Any | None = None) -> Any:
    """`value` converted to the declared type of `path` (strings as YAML scalars), or ConfigError."""
    tp = check_path(path) if tp is None else tp
    origin = typing.get_origin(tp)
    allowed = typing.get_args(tp) if origin is Literal else ()
    # A string is read as a YAML scalar ("3e-4", "true", "[1, 2]") unless the field takes strings:
    # a str field, a Literal of strings ("on" stays "on", not YAML's true), or a Literal's string
    # choice ("auto" of runtime.compile, whose other choices are true and false).
    str_choices = bool(allowed) and all(isinstance(a, str) for a in allowed)
    if isinstance(value, str) and not (tp is str or str_choices or _one_of(value, allowed)):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"{path}: cannot read {value!r} as a value") from None
    if origin is Literal:
        if not _one_of(value, allowed):
            names = ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)
            raise ConfigError(f"{path} must be one of {names}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list of {item.__name__}, got {value!r}")
        return [coerce(path, v, item) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path} must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"{path}: unsupported field type {tp}")  # a schema bug, not user input


def _one_of(value: Any, choices: tuple) -> bool:
    """`value` is one of `choices`, type included: 1 == True in Python, but 1 is no choice of true."""
    return any(type(value) is type(c) and value == c for c in choices)


# --------------------------------------------------------------------- building and validating
def get(cfg: TrainConfig, path: str) -> Any:
    obj: Any = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(cfg: TrainConfig, path: str, value: Any) -> None:
    """Set a dotted path in place, with type checking (not range checking: see validate)."""
    value = coerce(path, value)
    *parents, leaf = path.split(".")
    obj: Any = cfg
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_dict(d: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A validated TrainConfig from a nested dict (a YAML file) plus flat "a.b" overrides."""
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    cfg = TrainConfig()
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in (d or {}).items():
        if key in sections and key != "seed" and not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a section of keys, got {value!r}")
    for path, value in {**flatten(d or {}), **(overrides or {})}.items():
        set_path(cfg, path, value)
    validate(cfg)
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and consistency checks; raises ConfigError with one line naming the key."""
    for path, (lo, hi) in field_ranges().items():
        v = get(cfg, path)
        if v < lo or (hi is not None and v > hi):
            span = f"[{lo}, {'inf' if hi is None else hi}]"
            raise ConfigError(f"{path}={v!r} is out of range {span}")
    if not cfg.model.blocks or any(b < 1 or b > 64 for b in cfg.model.blocks):
        raise ConfigError(f"model.blocks must be 1..64 blocks per stage, got {cfg.model.blocks}")
    if cfg.data.val_fraction <= 0 and not cfg.data.train_on_val:
        raise ConfigError("data.val_fraction must be > 0 unless data.train_on_val is true")
    device = cfg.runtime.device
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return cfg


# ------------------------------------------------------------------------------------- YAML I/O
def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["optim.lr=3e-4", ...] -> {"optim.lr": "3e-4"}; values are typed by set_path."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def read_yaml(path: str | Path, what: str = "config file", error: type[UserError] = ConfigError) -> Any:
    """A YAML file's content, loaded safely; a missing or malformed file raises `error`."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{p} is a folder, not a {what}")
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise error(f"{p}: not valid YAML{where}") from None


def load(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load a YAML config file (or the defaults when path is None) and apply --set overrides."""
    data = read_yaml(path) if path is not None else None
    return from_dict(data, parse_overrides(overrides or []))


def dump(cfg: TrainConfig, path: str | Path | None = None, header: str = "") -> str:
    text = header + yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text
