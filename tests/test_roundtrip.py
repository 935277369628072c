"""Search -> export -> retrain: the exported config of the best trial, trained with the trial's own
settings (data.train_on_val=false), reproduces the trial's validation accuracy exactly."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stl_tune import config as C
from stl_tune.cli import app
from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import work
from stl_tune.train import train

pytestmark = pytest.mark.usefixtures("single_thread")  # in-process trainings


def test_exported_best_trial_retrains_to_the_same_accuracy(tmp_path, tiny_study):
    url = f"sqlite:///{tmp_path}/study.db"
    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(url))
    work(study, Objective(spec, tmp_path / "artifacts"), 3)
    best = study.best_trial

    out = tmp_path / "best.yaml"
    result = CliRunner().invoke(app, ["export", "--name", spec.name, "--storage", url, "--output", str(out)])
    assert result.exit_code == 0, result.output
    exported = C.load(out)
    assert exported.data.train_on_val  # export sets up the final training ...
    cfg = C.load(out, ["data.train_on_val=false", "runtime.device=cpu"])  # ... and these are the trial's own settings
    assert C.to_dict(cfg) == best.user_attrs["config"]

    retrained = train(cfg)
    assert retrained.best_val_acc == best.value
    assert [h["val_acc"] for h in retrained.history] == best.user_attrs["curve"]
