"""Export: the chosen or best COMPLETE trial's stored config, set to train on train+validation."""

import os
import socket
import subprocess

import optuna
import pytest
import yaml
from optuna.distributions import IntDistribution
from optuna.trial import TrialState
from typer.testing import CliRunner

from stl_tune import config
from stl_tune.cli import app
from stl_tune.cli import views as search_cli
from stl_tune.errors import StudyError
from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state.export import final_config, pick_trial, write_export

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
def study(storage_url):
    s = create_or_load_study(StudySpec.from_dict(SPEC), None, open_storage(storage_url, heartbeat=False))
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


def test_export_and_status_commands(study, storage_url, tmp_path):
    runner = CliRunner()
    out = tmp_path / "chosen.yaml"
    r = runner.invoke(app, ["export", "--storage", storage_url, "--trial", "2", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert config.load(out).model.width == 5 and "stl-tune train --config" in r.output
    r = runner.invoke(app, ["export", "--storage", storage_url, "--name", "nope", "-o", str(out)])
    assert r.exit_code == 2 and "error: no study 'nope'" in r.output

    r = runner.invoke(app, ["status", "--storage", storage_url], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "PRUNED" in r.output and "model.width=6" in r.output
    assert "Best: trial 4" in r.output  # by value; status shows it even without a config
    create_or_load_study(StudySpec.from_dict(SPEC), "second", storage_url)
    r = runner.invoke(app, ["status", "--storage", storage_url], terminal_width=200)
    assert "second" in r.output and "ex" in r.output and "Best" not in r.output  # a list of studies


@pytest.mark.parametrize("command", [["status"], ["export", "-o", "x.yaml"]])
def test_read_only_commands_create_no_database(command, tmp_path):
    url = f"sqlite:///{tmp_path / 'none' / 'db.sqlite'}"
    r = CliRunner().invoke(app, [*command, "--storage", url])
    assert r.exit_code == 2 and "error: no study storage at" in r.output and "stl-tune run" in r.output
    assert not (tmp_path / "none").exists()


def test_status_names_trials_of_dead_workers(study, storage_url, monkeypatch):
    from stl_tune.search.state.outcome import Reason, requeue_dead
    from stl_tune.search.state.trials import tally

    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    for pid in (dead.pid, os.getpid()):  # the dead worker's trial, and a live one (this process)
        t = study.ask()
        t.set_user_attr("status", "running")
        t.set_user_attr("worker", f"{host}:{pid}")
    stale = study.ask()  # one a heartbeat check failed: its attrs are as its worker left them
    stale.set_user_attr("status", "running")
    study.tell(stale, state=TrialState.FAIL)
    before = tally(study).failed

    (number,) = requeue_dead(study)  # only the trial of the dead process
    assert requeue_dead(study) == []  # failed once, queued once
    trials = study.get_trials()
    died = trials[number]
    assert died.state == TrialState.FAIL and died.user_attrs["worker"] == f"{host}:{dead.pid}"
    assert (died.user_attrs["status"], died.user_attrs["fail_reason"]) == ("died", Reason.DIED)
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == number]
    assert retry.state == TrialState.WAITING and retry.params == died.params
    assert [t.state for t in trials if t.user_attrs.get("worker") == f"{host}:{os.getpid()}"] == [TrialState.RUNNING]
    assert tally(study).failed == before + 1

    monkeypatch.setattr(search_cli.console, "width", 250)  # one line per row
    r = CliRunner().invoke(app, ["status", "--storage", storage_url])
    assert r.exit_code == 0, r.output
    cells = [line.split("│")[1:-1] for line in r.output.splitlines()]  # the table's rows
    notes = {int(row[0]): row[5].strip() for row in cells if row and row[0].strip().isdigit()}
    assert notes[number] == notes[stale.number] == Reason.DIED  # not "running"
    assert notes[retry.number] == f"retry of trial {number}"
