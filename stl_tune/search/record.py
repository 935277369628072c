"""A trial's record: the user attributes stl-tune keeps on trials and on studies, and the small
readers over them. The values of a trial's status and fail reason, and what writes them, are
search/state/outcome.py's.

Every other module names an attribute through this one (tests/test_structure.py finds none written
as a literal elsewhere). A leaf: it imports nothing of stl-tune, so that any module can use it.

Trial user attributes (search/worker/objective.py writes them while a trial runs, unless said otherwise):
  config              the fully resolved TrainConfig (config.to_dict); export reads it back
  curve               validation accuracy per epoch, updated every epoch (running and pruned trials too)
  epochs_run, seconds, compile_seconds (part of seconds), param_count, device: from the TrainResult
  status              an outcome.Status
  fail_reason         why the trial failed (an outcome.Reason, "diverged at epoch 3", "OutOfMemoryError: ..."), else None
  checkpoint          {"artifact_id", "epoch"} of the latest checkpoint while a retry may need it, else None
  resumed_from_epoch  epochs taken over from a previous attempt's checkpoint (0: a fresh start)
  epoch_seconds       wall time of each epoch this attempt ran, less compiling (a retry shows its predecessor's
                      until its first epoch ends): the live view's pace and time left (search/views/eta.py)
  worker              host:pid of the process that ran the trial (worker_id)
  enqueued            where a queued trial's config came from (search/spec/warmstart.py, search/state/confirm.py)
  copied_from         "study NAME, trial N" of a trial copied by --from-study (search/spec/warmstart.py)
  candidate           a confirmation's search trial number (search/state/confirm.py)
  kept                what a completed trial keeps for an ensemble (search/worker/keep.py): {"predictions":
                      artifact id, "model": artifact id or None, "value"}; its model file is removed
                      when the trial drops out of the best K, the attr stays (a finished trial's are fixed)
A retry (outcome.retry) inherits its predecessor's user attributes; the objective resets those
of an outcome when it starts (outcome.start).

Study user attributes:
  spec                StudySpec.to_dict() of the study file it was created with (search/state/study.py)
  n_trials            the trial budget, set by `stl-tune run --trials` (or by confirm: K x S)
  deadline, patience_trials, patience_from: the limits of the last run (search/state/limits.py)
  artifacts           the checkpoint folder the run chose, for workers of the same host
  confirmed           {"N": {"mean", "std", "values", "seeds"}} of `stl-tune confirm` (on the search)
  queued_only         on a confirm study: workers run queued trials only, never sampled ones
"""

from __future__ import annotations

import os
import socket

from optuna.trial import FrozenTrial

# ------------------------------------------------------------------------------ trial attrs
CONFIG_ATTR = "config"
CURVE_ATTR = "curve"
EPOCHS_RUN_ATTR = "epochs_run"
SECONDS_ATTR = "seconds"
DEVICE_ATTR = "device"
RESULT_ATTRS = (EPOCHS_RUN_ATTR, SECONDS_ATTR, "compile_seconds", "param_count", DEVICE_ATTR)  # TrainResult fields
STATUS_ATTR = "status"
FAIL_REASON_ATTR = "fail_reason"
CHECKPOINT_ATTR = "checkpoint"
RESUMED_ATTR = "resumed_from_epoch"
EPOCH_SECONDS_ATTR = "epoch_seconds"
WORKER_ATTR = "worker"
ENQUEUED_ATTR = "enqueued"
COPIED_ATTR = "copied_from"
CANDIDATE_ATTR = "candidate"
KEPT_ATTR = "kept"

# ------------------------------------------------------------------------------ study attrs
SPEC_ATTR = "spec"
N_TRIALS_ATTR = "n_trials"
DEADLINE_ATTR = "deadline"  # ISO-8601 UTC time at which workers stop starting trials
PATIENCE_ATTR = "patience_trials"  # stop after this many finished trials without a better one
PATIENCE_FROM_ATTR = "patience_from"  # the first trial number the patience counts
ARTIFACTS_ATTR = "artifacts"
CONFIRMED_ATTR = "confirmed"
QUEUED_ONLY_ATTR = "queued_only"

KNOWN_RECIPE = "the known recipe (config defaults)"  # the enqueued attr of a new study's trial 0


# ---------------------------------------------------------------------------------- readers
def counts(trial: FrozenTrial) -> bool:
    """Whether a trial counts towards the study's budget: not one copied from another study."""
    return COPIED_ATTR not in trial.user_attrs


def queued(trial: FrozenTrial) -> bool:
    """Whether a trial was queued with a config (the known recipe, --enqueue, a confirmation): it
    runs to full length, never pruned."""
    return ENQUEUED_ATTR in trial.user_attrs


def curve(trial: FrozenTrial) -> list[float]:
    """Validation accuracy per epoch so far, those taken over from a checkpoint included."""
    return list(trial.user_attrs.get(CURVE_ATTR) or [])


def epochs(trial: FrozenTrial, default: int) -> int:
    """A trial's optim.epochs (from its stored config), else `default`."""
    return (trial.user_attrs.get(CONFIG_ATTR) or {}).get("optim", {}).get("epochs", default)


def saved_epoch(trial: FrozenTrial) -> int:
    """The epoch of a trial's latest checkpoint, which its retry resumes from (0: none)."""
    return (trial.user_attrs.get(CHECKPOINT_ATTR) or {}).get("epoch", 0)


def worker_id() -> str:
    """host:pid of this process, the worker attr of the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker(trial: FrozenTrial) -> tuple[str, str]:
    """(host, pid) of the worker that ran a trial; ("", "") when none is recorded."""
    host, _, pid = str(trial.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
    return host, pid


def alive(pid: int) -> bool:
    """Whether process `pid` of this host exists (a worker of this host, by its worker attr)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
