"""The one bridge between Optuna and the trainer: a trial becomes one call of the trainer.

Per trial it builds the config from the study's search space, reports validation accuracy after
every epoch (the pruner may stop the run there), keeps the trainer's latest resume checkpoint
(written at most every runtime.checkpoint_interval_s, and at the end) in the artifact store so
that a retried trial (its worker died or was interrupted) resumes where the previous attempt last
saved, records in the trial's user attributes all it takes to reproduce and compare the trial
(search/record.py lists them), and returns how the trial ended: an Outcome, which the worker loop
settles (search/state/outcome.py). A completed trial keeps its validation predictions, and its
weights while among the study's best K, for `stl-tune ensemble` (search/worker/keep.py).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from stl_tune import config as C
from stl_tune.search import optuna_compat as compat
from stl_tune.search import record
from stl_tune.search.record import CHECKPOINT_ATTR, CURVE_ATTR
from stl_tune.search.spec.space import StudySpec, curve_value, suggest_config
from stl_tune.search.state import limits
from stl_tune.search.state.outcome import Kind, Outcome, caught, start
from stl_tune.search.worker.checkpoints import CheckpointStore, local_workdir, sweep_dead_workdirs
from stl_tune.search.worker.keep import Keeper
from stl_tune.train import EpochMetrics, TrainResult, TrainStatus, train

log = logging.getLogger(__name__)

# stl_tune.train.train's signature: (cfg, on_epoch_end, *, checkpoint, checkpoint_now)
Trainer = Callable[..., TrainResult]


class Objective:
    """`work(study, Objective(spec, artifacts), n_trials)` (search/worker/workers.py): runs a trial and
    returns its Outcome, whose value is the TrainResult field spec.objective (best_val_acc by
    default).

    artifacts: folder of the artifact store; every worker of a study must see the same folder
    (a shared file system across hosts) for a retry on another host to find the checkpoint.
    overrides: {"a.b": value} applied to every trial after the search space, e.g. the data folder
    of this host ({"data.dir": ...}).
    trainer: the function that trains one config (stl_tune.train.train; tests pass stand-ins).
    cpu: this worker is a CPU slot (`--gpus none`, `--workers N`): a trial's `runtime.device: auto`
    trains on the CPU here even where CUDA is available. The trial's recorded config keeps `auto`,
    so its export trains on the GPU of whoever runs it.
    stop_requested: True once a first Ctrl-C / SIGTERM asks the trial to stop (stl_tune/stop.py): the
    trainer checkpoints the epoch under way, which is uploaded, and the trial ends there as
    interrupted, so its retry resumes at that epoch.
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
        self.keeper = Keeper(artifacts, self.workdir, spec.keep_models)  # what an ensemble needs

    def config(self, trial: optuna.Trial) -> C.TrainConfig:
        cfg = suggest_config(trial, self.spec)
        for path, value in self.overrides.items():
            C.set_path(cfg, path, value)
        return C.validate(cfg)

    def __call__(self, trial: optuna.Trial) -> Outcome:
        ckpt = self.workdir / f"trial-{trial.number}.pt"
        attempts = [compat.trial_id(trial)]  # storage ids of this trial and the attempts it retries
        try:
            start(trial, self.worker)  # a retry inherits its predecessor's outcome: reset it
            outcome = self._run(trial, ckpt, attempts)
        except (Exception, KeyboardInterrupt) as e:  # a stop signal, or an error (search/state/outcome.py)
            outcome = caught(e)
        finally:
            ckpt.unlink(missing_ok=True)
            if torch.cuda.is_available():  # hand the trial's GPU memory back before the next one;
                gc.collect()  # a full collection costs ~0.2 s with torch loaded: not worth it on CPU
                torch.cuda.empty_cache()
        return dataclasses.replace(outcome, sweep=functools.partial(self._sweep, attempts))

    def _run(self, trial: optuna.Trial, ckpt: Path, attempts: list[int]) -> Outcome:
        cfg = self.config(trial)
        trial.set_user_attr(record.CONFIG_ATTR, C.to_dict(cfg))
        curve = self._resume(trial, ckpt, attempts)
        deadline = limits.deadline(trial.study.user_attrs)  # read once: a run sets it at its start
        if self.cpu and cfg.runtime.device == "auto":
            cfg = C.from_dict(C.to_dict(cfg), {"runtime.device": "cpu"})  # recorded above as auto
        stopped: list[Kind] = []  # why the epoch callback stopped the run, if it did
        result = self.trainer(
            cfg,
            self._epoch_callback(trial, cfg, ckpt, curve, deadline, stopped),
            checkpoint=ckpt,
            checkpoint_now=lambda: self.stop_requested() or (deadline is not None and limits.now() >= deadline),
        )
        if stopped and stopped[0] in (Kind.INTERRUPTED, Kind.PAUSED):
            return Outcome(stopped[0])  # at this epoch's checkpoint: the retry resumes there
        for key in record.RESULT_ATTRS:
            trial.set_user_attr(key, getattr(result, key))
        if result.status == TrainStatus.DIVERGED:
            return Outcome.diverged(result.diverged_epoch)
        if result.status == TrainStatus.STOPPED:  # the epoch callback asked: the pruner
            return Outcome(Kind.PRUNED)
        value = objective_value(result, self.spec.objective)
        self.keeper.keep(trial, cfg, result, value)  # a full run (completed | early_stopped): kept for an ensemble
        return Outcome(Kind(result.status), value)

    def _sweep(self, attempts: list[int]) -> None:
        """Remove every checkpoint of this line of attempts: it ends here."""
        self.store.sweep(attempts)
        if len(attempts) > 1:  # a retry: an earlier attempt's worker may have died on this host
            sweep_dead_workdirs()

    def _epoch_callback(
        self,
        trial: optuna.Trial,
        cfg: C.TrainConfig,
        ckpt: Path,
        curve: list[float],
        deadline: datetime | None,
        stopped: list[Kind],
    ):
        """The trainer's on_epoch_end: report the epoch, upload its checkpoint, and stop the run
        where the pruner, a stop signal or the deadline says so, putting the reason in `stopped`."""
        # An enqueued trial (the known recipe, --enqueue) runs to full length: a recipe that learns
        # slowly early must not lose to an early rung (search/spec/warmstart.py).
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
                stopped.append(Kind.PRUNED)  # the trial ends here: no checkpoint needed
                return True
            if not m.checkpointed:  # the trainer writes one every runtime.checkpoint_interval_s
                return False
            self._upload(trial, ckpt, m.epoch)
            # Stop only where the checkpoint just uploaded is this epoch's, so the retry resumes
            # exactly where the trial stopped: a Ctrl-C / SIGTERM or a passed deadline forces it
            # (checkpoint_now); one that comes after the trainer decided this epoch's save
            # forces the next epoch's, and the trial stops there.
            if self.stop_requested():
                stopped.append(Kind.INTERRUPTED)
            elif deadline is not None and limits.now() >= deadline:
                stopped.append(Kind.PAUSED)
            return bool(stopped)

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
        # inherits no reports (storages.retry_callback), since the epochs after the checkpoint run again.
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
        return curve


def objective_value(result: TrainResult, objective: str) -> float | None:
    """A trial's value (space.OBJECTIVES) from its result."""
    return curve_value([h["val_acc"] for h in result.history], objective)
