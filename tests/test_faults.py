"""Faults with real processes on SQLite: a worker killed with SIGKILL mid-trial, Ctrl-C on
`stl-tune run` and a re-run, and a trial whose loss turns NaN."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search.objective import Objective
from stl_tune.search.space import StudySpec
from stl_tune.search.study import create_or_load_study, open_storage
from stl_tune.search.workers import work

STL_TUNE = [str(Path(sys.executable).with_name("stl-tune"))]  # the installed console script
pytestmark = pytest.mark.usefixtures("single_thread")  # in-process trainings


def _study_file(tmp_path: Path, tiny_study: dict, epochs: int) -> Path:
    tiny_study["fixed"]["optim"]["epochs"] = epochs  # long enough to stop a trial mid-way
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study))
    return path


def _wait_for_checkpoint(url: str, name: str, procs: list[subprocess.Popen], timeout: float = 120) -> FrozenTrial:
    """The first RUNNING trial that has uploaded a checkpoint (>= 1 epoch done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a worker exited early"
        try:
            trials = optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            trials = []
        for t in trials:
            if t.user_attrs.get("checkpoint"):
                return t
        time.sleep(0.05)
    raise AssertionError("no trial reached its first checkpoint")


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow
def test_killed_worker_trial_resumes_from_its_checkpoint(tmp_path, tiny_study, worker_env):
    n, name, url, artifacts = 2, "kill", f"sqlite:///{tmp_path}/study.db", tmp_path / "artifacts"
    spec = StudySpec.from_dict(yaml.safe_load(_study_file(tmp_path, tiny_study, epochs=12).read_text()))
    create_or_load_study(spec, name, open_storage(url, heartbeat=False)).set_user_attr("n_trials", n)
    cmd = [*STL_TUNE, "worker", "--name", name, "--storage", url, "--gpus", "none", "--artifacts", str(artifacts)]
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i)], env=worker_env) for i in range(2)]

    victim = _wait_for_checkpoint(url, name, procs)
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    (dead,) = [p for p in procs if p.pid == pid]
    os.kill(pid, signal.SIGKILL)  # no handler runs: the trial stays RUNNING, its heartbeat stops
    (survivor,) = [p for p in procs if p is not dead]
    assert survivor.wait(timeout=180) == 0 and dead.wait() == -signal.SIGKILL

    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n and set(t.state for t in study.trials) <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL  # failed by the survivor's stale-heartbeat check
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    epoch = killed.user_attrs["checkpoint"]["epoch"]  # the dead trial's last checkpoint
    assert epoch >= 1 and retry.user_attrs["resumed_from_epoch"] == epoch
    assert retry.user_attrs["curve"][:epoch] == killed.user_attrs["curve"][:epoch]  # the curve continues
    assert len(retry.user_attrs["curve"]) == retry.user_attrs["epochs_run"] == 12
    assert not any(artifacts.iterdir())


@pytest.mark.slow
def test_ctrl_c_on_run_then_run_again_finishes_exactly_n(tmp_path, tiny_study, worker_env):
    n, name, url, artifacts = 3, "sigint", f"sqlite:///{tmp_path}/study.db", tmp_path / "artifacts"
    study_file = _study_file(tmp_path, tiny_study, epochs=12)
    cmd = [*STL_TUNE, "run", "--study", str(study_file), "--name", name, "--trials", str(n), "--workers", "2",
           "--gpus", "none", "--storage", url, "--artifacts", str(artifacts)]  # fmt: skip

    run = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(url, name, [run])
    run.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    study = optuna.load_study(study_name=name, storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    interrupted = [t for t in failed if t.user_attrs["fail_reason"] == "interrupted"]
    assert interrupted and {t.user_attrs["fail_reason"] for t in failed} <= {"interrupted", "surplus"}
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == len(interrupted)  # queued to resume

    again = subprocess.run(cmd, env=worker_env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    resumed = [t.user_attrs["resumed_from_epoch"] for t in _finished(study)]
    assert max(resumed) >= 1  # the trial we waited for went on from its checkpoint
    assert not any(artifacts.iterdir())


def test_diverging_trial_fails_with_its_reason_and_the_others_finish(tmp_path, tiny_study):
    # SGD at lr 10 with weight decay 1.0 multiplies the weights by about -9 per step: the loss
    # overflows within a few epochs, deterministically (seeded, CPU). lr 0.01 trains normally.
    tiny_study["search_space"] = {"optim.lr": {"type": "categorical", "choices": [0.01, 10.0]}}
    tiny_study["fixed"]["optim"].update(name="sgd", weight_decay=1.0, warmup_epochs=0, epochs=4)
    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(f"sqlite:///{tmp_path}/s.db"))
    for lr in (10.0, 0.01, 0.01):
        study.enqueue_trial({"optim.lr": lr})

    work(study, Objective(spec, tmp_path / "artifacts"), 2)

    diverged, *ok = study.trials
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["status"] == "diverged"
    assert re.fullmatch(r"diverged at epoch \d", diverged.user_attrs["fail_reason"])
    assert [t.state for t in ok] == [TrialState.COMPLETE, TrialState.COMPLETE]
