"""What one trial costs on this host's CPU, before any trial has run: on a host without a GPU, training
steps of a few images at the study's first config (reference_config) are timed on random data and
scaled to a full trial, and `run` and `worker` say so in one line when it is long (cost_note).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from stl_tune import config
from stl_tune.config import TrainConfig
from stl_tune.search.fmt import duration, secs
from stl_tune.search.spec.space import StudySpec

COST_NOTE_S = 600  # the start-up check speaks when one trial would take longer than this here


def reference_config(spec: StudySpec) -> TrainConfig:
    """The study's first config: the known recipe (defaults and `fixed`), each searched value that
    lies outside its range moved to the nearest bound (a categorical one to its first choice)."""
    cfg = config.from_dict(None, spec.fixed)
    for p in spec.params:
        if not p.applies(cfg):
            continue
        config.set_path(cfg, p.path, p.clamp(config.get(cfg, p.path)))
    return config.validate(cfg)


@dataclass
class TrialCost:
    steps: int  # optimizer steps per epoch
    step_s: float  # seconds per training step
    eval_s: float  # seconds of validation per epoch
    epochs: int

    @property
    def seconds(self) -> float:
        return self.epochs * (self.steps * self.step_s + self.eval_s)


PROBE_S = 1.0  # seconds: a full batch expected to take less is timed rather than scaled from small steps
PROBE_IMAGES = 4  # images a timed small step trains on (BatchNorm needs 2 where the last stage is 1 pixel)


def trial_cost(cfg: TrainConfig, train_images: int, threads: int, num_classes: int = 10) -> TrialCost:
    """What one full trial of `cfg` costs on this host's CPU with `threads` torch threads, from
    timed training steps on random data (the class count only sizes the last layer).

    Two steps of PROBE_IMAGES images are timed after one to warm up, and the faster counts. When a
    full batch would take under PROBE_S it is timed instead; else the forward-backward time is
    scaled to the batch and the optimizer step added once. Validation: the faster of two forward
    passes, per image, twice with flip TTA, over train_images * f / (1 - f) images
    (f = data.val_fraction). Augmentation is left out. Steps of 4 images, and the faster of two,
    because steps of one image projected anywhere from 0.3x to 10x a timed batch on a busy CPU
    (docs/BENCHMARKS.md, "The CPU start-up probe").
    """
    import torch
    import torch.nn.functional as F

    from stl_tune.model import build_model
    from stl_tune.train import make_optimizer

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(cfg.model, num_classes)
        opt = make_optimizer(model, cfg.optim, fused=False)
        size = cfg.data.image_size

        def step(n: int) -> tuple[float, float]:
            """(forward-backward, optimizer) seconds of one step of n images."""
            x, y = torch.rand(n, 3, size, size), torch.randint(num_classes, (n,))
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            return t1 - t0, time.perf_counter() - t1

        n = min(PROBE_IMAGES, cfg.optim.batch_size)
        step(n)
        fb, opt_s = min((step(n) for _ in range(2)), key=sum)
        batch = cfg.optim.batch_size
        step_s = fb / n * batch + opt_s
        if step_s < PROBE_S and batch > n:
            step_s = sum(step(batch))
        model.eval()
        with torch.no_grad():
            forward = min(_seconds(lambda: model(torch.rand(n, 3, size, size))) for _ in range(2)) / n
    finally:
        torch.set_num_threads(before)
    f = cfg.data.val_fraction
    val_images = train_images * f / (1 - f)
    eval_s = val_images * forward * (2 if cfg.eval.tta else 1)
    return TrialCost(steps=train_images // batch, step_s=step_s, eval_s=eval_s, epochs=cfg.optim.epochs)


def _seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cost_note(
    spec: StudySpec, study: optuna.Study, slots: list[str | None], data_dir: Path | None, threads: int
) -> str | None:
    """On a host without a GPU, before a study's first trial: time one training step and say in
    one line what a full trial of the study's first config takes here, when that is longer than
    COST_NOTE_S; None otherwise. It informs: the run goes on."""
    from stl_tune import data

    if any(slot is not None for slot in slots):
        return None
    if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        return None  # trials have run: their epoch times give the time left instead
    cfg = reference_config(spec)
    if data_dir is not None:
        cfg.data.dir = str(data_dir)
    cost = trial_cost(cfg, data.train_size(cfg.data), threads)
    if cost.seconds < COST_NOTE_S:
        return None
    m = cfg.model
    return (
        f"note: no GPU in use: one trial (width {m.width}, batch {cfg.optim.batch_size}, {cfg.data.image_size} px, "
        f"{cost.epochs} epochs) takes about {duration(cost.seconds)} on this CPU ({cost.steps} steps of "
        f"{secs(cost.step_s)} s + {secs(cost.eval_s)} s of validation per epoch, {threads} threads); "
        "use a GPU (--gpus), a smaller study (--study studies/smoke.yaml) or --time-budget"
    )
