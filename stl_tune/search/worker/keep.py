"""What a completed trial keeps for an ensemble of the search's models (`stl-tune ensemble`), in the
study's artifact store beside the resume checkpoints, so that every host sees it:

  predictions  every completed trial's class probabilities on the validation images, from its final
               (EMA) weights with the flip TTA of its score (eval.tta), as float16, with the
               validation labels and a digest of the split: n_val x classes x 2 bytes a trial
  model        the final weights as a model file (outputs.save_model), for the best K completed
               trials only (the study file's keep_models, default 5; 0: none)

So a study's ensemble files take at most K model files plus one small predictions file per
completed trial (`stl-tune status` prints both).

Artifact ids: `ensemble-<trial id>-predictions` and `ensemble-<trial id>-model`, by the storage's
trial id (one artifact folder may serve several studies of a storage); not `trial-<id>-`, which the
end of a trial sweeps (search/worker/checkpoints.py).

The best K: once a trial has kept its files, its worker ranks the study's model files by their
trials' values (a running trial's from its kept attr, set before its upload) and removes all but the
best K, and any file of a trial that ended otherwise than COMPLETE (failed as stale after its
upload). Workers do this concurrently without a lock: each one lists the folder after its own
upload, so of two workers the later lister sees both files; a worker that saw fewer files only
removes files that also rank below K among more, so the folder settles at the best K.

Validation predictions of two trials are comparable only when their validation images are the same:
the split is drawn by the trial config's seed and data.val_fraction (a split-layout folder's val/
is fixed). Each predictions file records a digest of its split (the validation indices and labels)
and the image size (an ensemble's members all see the images at the size of its first); search/
ensemble.py only combines trials of one split and one image size.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from stl_tune import config as C
from stl_tune.data import load_data
from stl_tune.outputs import save_model
from stl_tune.search import optuna_compat as compat
from stl_tune.search.record import KEPT_ATTR
from stl_tune.search.worker.checkpoints import PARTIAL, CheckpointStore
from stl_tune.train import TrainResult, predict_logits, resolve_device

PREFIX = "ensemble-"
PREDICTIONS, MODEL = "predictions", "model"


def artifact_id(trial_id: int, kind: str) -> str:
    """The artifact id of a trial's predictions or model file (kind: PREDICTIONS | MODEL)."""
    return f"{PREFIX}{trial_id}-{kind}"


def is_kept(name: str) -> bool:
    """Whether a file of the artifact folder is one kept for an ensemble (not a resume checkpoint)."""
    return _parse(name) is not None


def _parse(name: str) -> tuple[int, str] | None:
    """(trial id, kind) of a kept file's name, None for any other file of the folder."""
    if not name.startswith(PREFIX):
        return None
    tid, _, kind = name[len(PREFIX) :].partition("-")
    return (int(tid), kind) if tid.isdigit() and kind in (PREDICTIONS, MODEL) else None


def split_digest(index: torch.Tensor, labels: torch.Tensor) -> str:
    """A digest of a validation split: its image indices and their labels."""
    h = hashlib.sha1(index.cpu().to(torch.int64).numpy().tobytes())
    h.update(labels.cpu().to(torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


class Keeper:
    """The objective's part (search/worker/objective.py): after a trial's run completed, keep its
    predictions and, while it ranks among the best `k`, its model."""

    def __init__(self, artifacts: str | Path, workdir: Path, k: int):
        self.store = CheckpointStore(artifacts)
        self.folder = Path(artifacts)
        self.workdir = workdir  # local files, uploaded from here
        self.k = k

    def keep(self, trial: optuna.Trial, cfg: C.TrainConfig, result: TrainResult, value: float | None) -> None:
        if result.model is None or value is None or not math.isfinite(value):
            return
        tid = compat.trial_id(trial)
        study = trial.study
        keep_model = self.k > 0 and self._ranks_in_top_k(study, value, tid)
        ids = {PREDICTIONS: artifact_id(tid, PREDICTIONS), MODEL: artifact_id(tid, MODEL) if keep_model else None}
        # the value first: a worker that lists this model file ranks it by this attr until the trial is told
        trial.set_user_attr(KEPT_ATTR, {**ids, "value": value})
        self._upload(ids[PREDICTIONS], lambda path: torch.save(predictions(cfg, result), path))
        if keep_model:
            self._upload(ids[MODEL], lambda path: save_model(path, cfg, result.classes, result.model))
        self.prune(study)

    def _upload(self, artifact: str, write) -> None:
        local = self.workdir / artifact
        write(local)
        try:
            with open(local, "rb") as f:
                self.store.write(artifact, f)
        finally:
            local.unlink(missing_ok=True)

    def _ranks_in_top_k(self, study: optuna.Study, value: float, tid: int) -> bool:
        ranking = self._ranking(study, study.get_trials(deepcopy=False))[0]
        others = [v for v, t in ranking if t != tid]
        if len(others) < self.k:
            return True
        kth = others[self.k - 1]
        return value > kth if study.direction == optuna.study.StudyDirection.MAXIMIZE else value < kth

    def _ranking(self, study: optuna.Study, trials: list[FrozenTrial]) -> tuple[list[tuple[float, int]], list[str]]:
        """([(value, trial id)] of the study's model files, best first; the files to remove: those of
        trials that ended otherwise than COMPLETE, predictions and partial uploads included)."""
        by_id = {compat.trial_id(t): t for t in trials}
        ranking, dead = [], []
        for f in self.folder.iterdir():
            parsed = _parse(f.name.removeprefix(PARTIAL))  # a partial upload: its worker was killed, or is uploading
            if parsed is None or parsed[0] not in by_id:  # another study's, or not ours
                continue
            t = by_id[parsed[0]]
            if t.state.is_finished() and t.state != TrialState.COMPLETE:
                dead.append(f.name)
            elif parsed[1] == MODEL and not f.name.startswith(PARTIAL):
                value = t.value if t.state == TrialState.COMPLETE else (t.user_attrs.get(KEPT_ATTR) or {}).get("value")
                if value is not None:  # else a read that missed the attr: not ranked here, its own worker ranks it
                    ranking.append((value, parsed[0]))
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranking.sort(key=lambda vt: (-vt[0] if maximize else vt[0], vt[1]))  # ties: the earlier trial
        return ranking, dead

    def prune(self, study: optuna.Study) -> list[str]:
        """Remove the study's model files below the best K and the files of trials that did not
        complete; the artifact ids removed."""
        ranking, dead = self._ranking(study, study.get_trials(deepcopy=False))
        removed = dead + [artifact_id(tid, MODEL) for _, tid in ranking[self.k :]]
        for artifact in removed:
            self.store.remove(artifact)
        return removed


def predictions(cfg: C.TrainConfig, result: TrainResult) -> dict:
    """The validation predictions of a finished run: what the predictions file holds."""
    device = resolve_device(cfg.runtime.device)
    ds = load_data(cfg.data, cfg.seed, device)  # the trainer's own split, cached in this process
    logits = predict_logits(result.model, ds.images, cfg, device, ds.val)
    labels = ds.labels[ds.val]
    return {
        "probs": torch.softmax(logits, dim=1).half().cpu(),
        "labels": labels.cpu(),
        "split": split_digest(ds.val, labels),
        "seed": cfg.seed,
        "val_fraction": cfg.data.val_fraction,
        "classes": list(ds.classes),
        "image_size": cfg.data.image_size,
    }


# ------------------------------------------------------------------------------------ readers
@dataclass
class Kept:
    """A completed trial's kept files."""

    trial: FrozenTrial
    predictions: Path
    model: Path | None  # None once the trial dropped out of the best K (or K was 0)


def kept(study: optuna.Study, artifacts: str | Path) -> list[Kept]:
    """The study's completed trials with their predictions file in `artifacts`, best first."""
    folder = Path(artifacts)
    found = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if KEPT_ATTR not in t.user_attrs:
            continue
        pred, model = (folder / artifact_id(compat.trial_id(t), kind) for kind in (PREDICTIONS, MODEL))
        if pred.is_file():
            found.append(Kept(t, pred, model if model.is_file() else None))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(found, key=lambda k: (-k.trial.value if maximize else k.trial.value, k.trial.number))


@dataclass
class Usage:
    predictions: int  # files
    predictions_bytes: int
    models: int
    models_bytes: int

    def line(self, k: int, folder: Path) -> str:
        """In words, for `stl-tune status`."""
        if not k:
            models = "no trial weights (keep_models: 0)"
        elif self.models:
            each = _mb(self.models_bytes / self.models)
            models = f"the weights of the best {self.models} ({each} each; keep_models: at most {k})"
        else:
            models = f"no trial weights yet (keep_models: at most {k})"
        return (
            f"kept for `stl-tune ensemble` in {folder}: validation predictions of {self.predictions} trials "
            f"({_mb(self.predictions_bytes)}), {models}"
        )


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 / 10 else f"{n / 2**10:.0f} kB"


def usage(study: optuna.Study, artifacts: str | Path) -> Usage:
    """What the study's kept files take in `artifacts`."""
    ids = {compat.trial_id(t) for t in study.get_trials(deepcopy=False)}
    u = Usage(0, 0, 0, 0)
    folder = Path(artifacts)
    if not folder.is_dir():
        return u
    for f in folder.iterdir():
        parsed = _parse(f.name)
        if parsed is not None and parsed[0] in ids:
            size = f.stat().st_size
            if parsed[1] == MODEL:
                u.models, u.models_bytes = u.models + 1, u.models_bytes + size
            else:
                u.predictions, u.predictions_bytes = u.predictions + 1, u.predictions_bytes + size
    return u
