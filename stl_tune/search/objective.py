"""The one bridge between Optuna and the trainer: a trial becomes one call of the trainer.

Per trial it builds the config from the study's search space, reports validation accuracy after
every epoch (the pruner may stop the run there), keeps the trainer's latest resume checkpoint
(written at most every runtime.checkpoint_interval_s, and at the end) in the artifact store so
that a retried trial (its worker died or was interrupted) resumes where the previous attempt last
saved, and records in the trial's user attributes all it takes to reproduce and compare the trial
(search/record.py lists them).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from stl_tune import config as C
from stl_tune.errors import DataError
from stl_tune.search import budget, record
from stl_tune.search import optuna_compat as compat
from stl_tune.search.checkpoints import CheckpointStore, local_workdir, sweep_dead_workdirs
from stl_tune.search.record import CHECKPOINT_ATTR, CURVE_ATTR, Reason, Status
from stl_tune.search.space import StudySpec, curve_value, suggest_config
from stl_tune.train import EpochMetrics, TrainResult, train

log = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult]  # stl_tune.train.train's signature: (cfg, on_epoch_end, *, checkpoint)


class Objective:
    """`study.optimize(Objective(spec, artifacts))`: returns the TrainResult field spec.objective
    (best_val_acc by default).

    artifacts: folder of the artifact store; every worker of a study must see the same folder
    (a shared file system across hosts) for a retry on another host to find the checkpoint.
    overrides: {"a.b": value} applied to every trial after the search space, e.g. the data folder
    of this host ({"data.dir": ...}).
    trainer: the function that trains one config (stl_tune.train.train; tests pass stand-ins).
    cpu: this worker is a CPU slot (`--gpus none`, `--workers N`): a trial's `runtime.device: auto`
    trains on the CPU here even where CUDA is available. The trial's recorded config keeps `auto`,
    so its export trains on the GPU of whoever runs it.
    stop_requested: True once a first Ctrl-C / SIGTERM asks the trial to stop (workers.Stop): the
    trainer checkpoints the epoch under way, which is uploaded, and the trial stops there
    (KeyboardInterrupt), so its retry resumes at that epoch.
    """

    def __init__(
        self,
        spec: StudySpec,
        artifacts: str | Path,
        overrides: dict[str, Any] | None = None,
        trainer: Trainer = train,
        cpu: bool = False,
        stop_requested: Callable[[], bool] = lambda: False,
    ):
        self.spec = spec
        self.store = CheckpointStore(artifacts)
        self.overrides = dict(overrides or {})
        self.trainer = trainer
        self.cpu = cpu
        self.stop_requested = stop_requested
        # Local checkpoint files: the trainer writes here (atomically), we upload from here.
        self._tmp = local_workdir()
        self.workdir = Path(self._tmp.name)
        self.worker = record.worker_id()

    def config(self, trial: optuna.Trial) -> C.TrainConfig:
        cfg = suggest_config(trial, self.spec)
        for path, value in self.overrides.items():
            C.set_path(cfg, path, value)
        return C.validate(cfg)

    def __call__(self, trial: optuna.Trial) -> float:
        record.start(trial, self.worker)  # a retry inherits its predecessor's outcome: reset it
        ckpt = self.workdir / f"trial-{trial.number}.pt"
        keep_checkpoint = False
        attempts: list[int] = []  # storage ids of this trial and the attempts it retries
        try:
            cfg = self.config(trial)
            trial.set_user_attr(record.CONFIG_ATTR, C.to_dict(cfg))
            curve = self._resume(trial, ckpt, attempts)
            deadline = budget.deadline(trial.study.user_attrs)  # read once: a run sets it at its start
            if self.cpu and cfg.runtime.device == "auto":
                cfg = C.from_dict(C.to_dict(cfg), {"runtime.device": "cpu"})  # recorded above as auto
            result = self.trainer(
                cfg,
                self._epoch_callback(trial, cfg, ckpt, curve, deadline),
                checkpoint=ckpt,
                checkpoint_now=lambda: self.stop_requested() or (deadline is not None and budget.now() >= deadline),
            )
            for key in record.RESULT_ATTRS:
                trial.set_user_attr(key, getattr(result, key))
            status, value, diverged_epoch = (
                result.status,
                objective_value(result, self.spec.objective),
                result.diverged_epoch,
            )
            del result  # holds the model: free it before the next trial (see finally)
            if status == Status.DIVERGED:
                record.end(trial, Status.DIVERGED, record.diverged(diverged_epoch))
                # Optuna records a NaN objective as FAIL, without a traceback in the worker's log.
                return math.nan
            if status == "stopped":  # the trainer's word for: the epoch callback asked (the pruner)
                record.end(trial, Status.PRUNED)
                raise optuna.TrialPruned(f"pruned at epoch {len(curve)}")
            record.end(trial, status)  # the trainer's: completed | early_stopped
            return value
        except KeyboardInterrupt:
            # Stopped from outside (Ctrl-C, SIGTERM): the worker queues a retry that resumes here.
            record.end(trial, Status.INTERRUPTED, Reason.INTERRUPTED)
            keep_checkpoint = True
            raise
        except budget.TimeUp:  # the study's time budget is spent: the worker queues a retry that resumes here
            record.end(trial, Status.PAUSED, Reason.TIME_BUDGET)
            keep_checkpoint = True
            raise
        except DataError:
            # The data is bad, not this trial's config: every trial would fail the same way. The
            # worker queues this one again (a queued recipe stays queued) and stops the run.
            record.end(trial, Status.FAILED, Reason.DATA)
            keep_checkpoint = True
            raise
        except optuna.TrialPruned:
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            # Another worker failed this trial as stale (our heartbeats stalled) and queued a
            # retry, which resumes from the checkpoint recorded so far: leave it in place.
            keep_checkpoint = True
            raise
        except Exception as e:  # CUDA OOM, a bad value, a bug: this trial fails, the worker goes on
            record.end(trial, Status.FAILED, f"{type(e).__name__}: {e}".splitlines()[0][:500])
            # The traceback holds train()'s frames (model, optimizer, compiled graph): clear their
            # locals so the collection below can free the trial's GPU memory. File and line stay,
            # so the traceback Optuna logs still reads as it should.
            traceback.clear_frames(e.__traceback__)
            raise
        finally:
            if not keep_checkpoint:  # the line of attempts ends here: remove all it wrote
                self.store.sweep(attempts or [compat.trial_id(trial)])
                if len(attempts) > 1:  # a retry: an earlier attempt's worker may have died on this host
                    sweep_dead_workdirs()
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    trial.set_user_attr(CHECKPOINT_ATTR, None)
            ckpt.unlink(missing_ok=True)
            if torch.cuda.is_available():  # hand the trial's GPU memory back before the next one;
                gc.collect()  # a full collection costs ~0.2 s with torch loaded: not worth it on CPU
                torch.cuda.empty_cache()

    def _epoch_callback(
        self, trial: optuna.Trial, cfg: C.TrainConfig, ckpt: Path, curve: list[float], deadline: datetime | None
    ):
        # An enqueued trial (the known recipe, --enqueue) runs to full length: a recipe that learns
        # slowly early must not lose to an early rung (search/warmstart.py).
        prunable = not record.queued(trial)
        seconds: list[float] = []

        def on_epoch_end(m: EpochMetrics) -> bool:
            curve.append(m.val_acc)
            trial.set_user_attr(CURVE_ATTR, curve)
            seconds.append(round(m.seconds - m.compile_seconds, 3))  # the pace: compiling is once per process
            trial.set_user_attr(record.EPOCH_SECONDS_ATTR, seconds)
            trial.set_user_attr(record.EPOCHS_RUN_ATTR, m.epoch)
            trial.report(m.val_acc, m.epoch)
            if m.epoch >= cfg.optim.epochs:
                return False  # the run is over: keep its value rather than prune it
            if prunable and trial.should_prune():
                return True  # the trial ends here: no checkpoint needed
            if not m.checkpointed:  # the trainer writes one every runtime.checkpoint_interval_s
                return False
            self._upload(trial, ckpt, m.epoch)
            # Stop only where the checkpoint just uploaded is this epoch's, so the retry resumes
            # exactly where the trial stopped: a Ctrl-C / SIGTERM or a passed deadline forces it
            # (checkpoint_now); one that comes after the trainer decided this epoch's save
            # forces the next epoch's, and the trial stops there.
            if self.stop_requested():
                raise KeyboardInterrupt
            if deadline is not None and budget.now() >= deadline:
                raise budget.TimeUp
            return False

        return on_epoch_end

    def _upload(self, trial: optuna.Trial, ckpt: Path, epoch: int) -> None:
        """Checkpoint for a retry: upload the new one before dropping the old, so a worker killed in
        between leaves a trial with a checkpoint (and a file that the end of its retry sweeps)."""
        artifact_id = self.store.new_id(compat.trial_id(trial), epoch)
        with open(ckpt, "rb") as f:
            self.store.write(artifact_id, f)
        old = trial.user_attrs.get(CHECKPOINT_ATTR)
        try:
            trial.set_user_attr(CHECKPOINT_ATTR, {"artifact_id": artifact_id, "epoch": epoch})
        except optuna.exceptions.UpdateFinishedTrialError:
            self.store.remove(artifact_id)  # failed as stale meanwhile: nobody will read it
            raise
        if old:
            self.store.remove(old["artifact_id"])

    def _resume(self, trial: optuna.Trial, ckpt: Path, attempts: list[int]) -> list[float]:
        """Download the previous attempt's checkpoint when this trial retries one; the curve so far.
        Fills `attempts` with the storage ids of the earlier attempts and of this trial."""
        history = compat.retry_history(compat.frozen(trial))
        earlier = [t for t in trial.study.get_trials(deepcopy=False) if t.number in history]
        attempts[:] = [*map(compat.trial_id, earlier), compat.trial_id(trial)]
        previous = next((t for t in earlier if t.number == history[-1]), None) if history else None
        saved = previous.user_attrs.get(CHECKPOINT_ATTR) if previous is not None else None
        epoch = 0
        if saved:
            try:
                download_artifact(artifact_store=self.store, file_path=str(ckpt), artifact_id=saved["artifact_id"])
                epoch = saved["epoch"]
            except ArtifactNotFound:  # e.g. the artifact folder is not shared with that host
                log.warning(
                    "trial %d: checkpoint of trial %d not found in the artifact store; starting at epoch 0",
                    trial.number,
                    previous.number,
                )
        # Own the inherited checkpoint from here on: the next upload replaces it, the end drops it.
        trial.set_user_attr(CHECKPOINT_ATTR, saved if epoch else None)
        trial.set_user_attr(record.RESUMED_ATTR, epoch)
        curve = record.curve(previous)[:epoch] if previous is not None else []
        trial.set_user_attr(CURVE_ATTR, curve)
        # The epochs taken over, for the pruner, which compares whole curves. Only those: the retry
        # inherits no reports (study.retry_callback), since the epochs after the checkpoint run again.
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
        return curve


def objective_value(result: TrainResult, objective: str) -> float | None:
    """A trial's value (space.OBJECTIVES) from its result."""
    return curve_value([h["val_acc"] for h in result.history], objective)
