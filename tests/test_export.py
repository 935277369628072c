"""Export: the chosen or best COMPLETE trial's stored config, set to train on train+validation."""

import optuna
import pytest
import yaml
from optuna.distributions import IntDistribution
from optuna.trial import TrialState
from typer.testing import CliRunner

from stl_tune import config
from stl_tune.search.cli import app
from stl_tune.search.export import final_config, pick_trial, write_export
from stl_tune.search.space import StudyError, StudySpec
from stl_tune.search.study import create_or_load_study, open_storage

SPEC = {"name": "ex", "search_space": {"model.width": {"type": "int", "low": 4, "high": 8}}}


def add(study, width, value, state=TrialState.COMPLETE, with_config=True):
    cfg = config.from_dict({"model": {"width": width}, "runtime": {"device": "cuda:1"}})
    study.add_trial(
        optuna.create_trial(
            state=state,
            value=value,
            params={"model.width": width},
            distributions={"model.width": IntDistribution(4, 8)},
            user_attrs={"config": config.to_dict(cfg)} if with_config else {},
        )
    )


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture
def study(url):
    s = create_or_load_study(StudySpec.from_dict(SPEC), None, open_storage(url, heartbeat=False))
    add(s, 4, 0.5)  # 0
    add(s, 6, 0.7)  # 1: the best
    add(s, 5, 0.6)  # 2
    add(s, 7, None, TrialState.PRUNED)  # 3
    add(s, 8, 0.9, with_config=False)  # 4: best value, but it stored no config
    return s


def test_export_best_and_chosen_trial(study):
    study.add_trial(optuna.create_trial(state=TrialState.FAIL))  # ignored
    # trial 4 is best by value but has no config: export must say so, not rebuild it from params
    with pytest.raises(StudyError, match="trial 4 stored no config"):
        final_config(pick_trial(study))
    cfg = final_config(pick_trial(study, 2))
    assert cfg.model.width == 5 and cfg.data.train_on_val is True and cfg.runtime.device == "auto"


def test_written_file_loads_as_train_config(study, tmp_path):
    out = tmp_path / "sub" / "best.yaml"
    trial = write_export(study, 1, out)
    assert trial.number == 1
    text = out.read_text()
    assert "study 'ex', trial 1 (best_val_acc = 0.7000)" in text
    assert f"stl-tune train --config {out}" in text
    cfg = config.load(out)
    assert cfg.model.width == 6 and cfg.data.train_on_val is True
    # everything else is exactly the trial's stored config
    stored = study.trials[1].user_attrs["config"]
    stored["data"]["train_on_val"], stored["runtime"]["device"] = True, "auto"
    assert yaml.safe_load(text) == stored


@pytest.mark.parametrize(
    "number,needle",
    [(99, "has no trial 99; trials are 0..4"), (3, "trial 3 of study 'ex' is PRUNED, not COMPLETE")],
)
def test_export_errors(study, number, needle):
    with pytest.raises(StudyError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        final_config(pick_trial(study, number))


def test_no_complete_trial(tmp_path):
    s = optuna.create_study(study_name="empty")
    add(s, 4, None, TrialState.PRUNED)
    with pytest.raises(StudyError, match="no complete trial"):
        final_config(pick_trial(s))


def test_export_and_status_commands(study, url, tmp_path):
    runner = CliRunner()
    out = tmp_path / "chosen.yaml"
    r = runner.invoke(app, ["export", "--storage", url, "--trial", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert config.load(out).model.width == 5 and "stl-tune train --config" in r.output
    r = runner.invoke(app, ["export", "--storage", url, "--name", "nope", "-o", str(out)])
    assert isinstance(r.exception, StudyError) and "no study 'nope'" in str(r.exception)

    r = runner.invoke(app, ["status", "--storage", url], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "PRUNED" in r.output and "model.width=6" in r.output
    assert "Best: trial 4" in r.output  # by value; status shows it even without a config
    create_or_load_study(StudySpec.from_dict(SPEC), "second", url)
    r = runner.invoke(app, ["status", "--storage", url], terminal_width=200)
    assert "second" in r.output and "ex" in r.output and "Best" not in r.output  # a list of studies
