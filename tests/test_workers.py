"""Worker processes against real databases: the exact trial budget, every test on SQLite and on a
PostgreSQL server (the storage_url fixture: Optuna's style, one test body for every storage)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
import yaml
from commands import stl_tune
from optuna.trial import TrialState
from typer.testing import CliRunner

from stl_tune.cli import app
from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state.trials import is_surplus, tally
from stl_tune.search.worker.keep import is_kept
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import StudyStopped, work


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_tally_counts_and_best_follow_the_direction(direction, storage_url):
    study = optuna.create_study(direction=direction, storage=open_storage(storage_url, heartbeat=False))
    for value in (0.3, 0.1, 0.5):
        study.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    surplus = optuna.create_trial(
        state=TrialState.FAIL, params={}, distributions={}, user_attrs={"fail_reason": "surplus"}
    )
    study.add_trial(surplus)  # counts for nothing
    t = tally(study)
    assert (t.trials, t.complete, t.pruned, t.failed, t.finished) == (5, 3, 1, 0, 4)
    assert t.best.number == study.best_trial.number == (2 if direction == "maximize" else 1)


def test_claims_count_trials_ahead_in_flight_or_finished(storage_url):
    study = optuna.create_study(storage=open_storage(storage_url, heartbeat=False))
    first, second = study.ask(), study.ask()
    third = study.ask()
    assert not is_surplus(study, second, 2)  # one trial ahead of it
    assert is_surplus(study, third, 2)  # two ahead, both still running: they may fill the budget
    study.tell(first, state=TrialState.FAIL)
    assert not is_surplus(study, third, 2)  # a failed trial never counts
    study.tell(second, 1.0)
    study.enqueue_trial({})  # a waiting trial (e.g. a retry) behind it does not count for it
    assert not is_surplus(study, third, 2)


@pytest.mark.slow
def test_racing_workers_finish_exactly_n_trials(storage_url, worker_env):
    """Four processes claim trials as fast as they can (trials of a few ms): never one too many.

    "blind": each process asks for 10 trials without any pre-check, so only the claim check
    after ask() stands between 40 claims and a budget of 12. "work": the workers' real loop."""
    n, blind, real = 12, "blind", "work"
    for name in (blind, real):
        optuna.create_study(study_name=name, storage=open_storage(storage_url, heartbeat=False))
    script = textwrap.dedent(f"""
        import random, time, optuna
        from optuna.trial import TrialState
        from stl_tune.search import open_storage
        from stl_tune.search.state.trials import is_surplus
        from stl_tune.search.worker.workers import work
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage({storage_url!r}, heartbeat=False)
        study = optuna.load_study(study_name={blind!r}, storage=storage)
        for _ in range(10):
            trial = study.ask()
            if is_surplus(study, trial, {n}):
                study.tell(trial, state=TrialState.FAIL)
            else:
                time.sleep(random.random() * 0.02)
                study.tell(trial, 1.0)
        study = optuna.load_study(study_name={real!r}, storage=storage)
        work(study, lambda t: time.sleep(random.random() * 0.02) or t.suggest_float("x", 0, 1), {n}, poll_s=0.05)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], env=worker_env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]

    for name in (blind, real):
        study = optuna.load_study(study_name=name, storage=storage_url)
        states = _states(study)
        assert states["COMPLETE"] == n and set(states) <= {"COMPLETE", "FAIL"}, (name, states)
        assert sorted(t.number for t in study.trials) == list(range(len(study.trials)))
    assert states.get("FAIL", 0) == sum(t.user_attrs.get("fail_reason") == "surplus" for t in study.trials)


@pytest.mark.slow
def test_run_with_three_workers_finishes_exactly_n_trials(storage_url, worker_env, tiny_study, tmp_path):
    n, name = 5, "run"
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    artifacts = tmp_path / "artifacts"
    cmd = stl_tune("run", study=study_file, name=name, trials=n, workers=3, storage=storage_url, artifacts=artifacts)
    out = subprocess.run(cmd, env=worker_env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    password = storage_url.partition("@")[0].rpartition(":")[2]
    if storage_url.startswith("postgresql"):  # shown masked, never in clear
        assert password not in out.stdout + out.stderr and "***@127.0.0.1" in out.stdout
    assert {f"[w{i}]" for i in range(3)} <= set(out.stdout.split())  # all three worked (or waited)

    study = optuna.load_study(study_name=name, storage=storage_url)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    assert set(_states(study)) <= {"COMPLETE", "PRUNED", "FAIL"}  # none RUNNING or WAITING
    assert all(t.user_attrs["fail_reason"] == "surplus" for t in study.trials if t.state == TrialState.FAIL)
    assert len({t.number for t in study.trials}) == len(study.trials)
    for t in finished:
        assert t.user_attrs["config"]["optim"]["lr"] == t.params["optim.lr"]
        assert len(t.user_attrs["curve"]) == t.user_attrs["epochs_run"] >= 1
    assert study.user_attrs["n_trials"] == n
    # every checkpoint was removed once its trial finished
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.usefixtures("single_thread")
def test_hopeless_study_stops_with_the_last_reason(storage_url, tmp_path, tiny_study):
    def broken(cfg, on_epoch_end=None, **kw):
        raise FileNotFoundError("no stl10_binary/ in /data")

    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(storage_url))
    with pytest.raises(StudyStopped, match=r"last 3 trials failed \(last: FileNotFoundError: no stl10_binary"):
        work(study, Objective(spec, tmp_path / "artifacts", trainer=broken), 5, max_failures=3)
    assert _states(study) == {"FAIL": 3}

    # the cause is fixed: a new run is not stopped by the old failures
    work(study, Objective(spec, tmp_path / "artifacts"), 1, max_failures=3)
    assert _states(study) == {"FAIL": 3, "COMPLETE": 1}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--trials", "2", "--gpus", "7"], "no GPU 7 here"),
        (["--trials", "2", "--gpus", "abc"], "--gpus must be"),
        ([], "has no trial budget yet; pass --trials N"),
    ],
)
def test_bad_run_arguments_leave_no_study_behind(args, needle, storage_url, tmp_path, tiny_study):
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    r = CliRunner().invoke(app, ["run", "--study", str(study_file), "--storage", storage_url, *args])
    assert r.exit_code == 2 and needle in r.output, r.output
    assert optuna.get_all_study_names(storage_url) == []


def test_run_and_worker_with_the_budget_reached_do_nothing(storage_url, tmp_path, tiny_study):
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    url = storage_url
    study = create_or_load_study(StudySpec.from_dict(tiny_study), None, url)
    for value in (0.2, 0.3):
        study.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    for cmd in (["run", "--study", str(study_file)], ["worker", "--name", "tiny", "--gpus", "none"]):
        r = CliRunner().invoke(app, [*cmd, "--storage", url, "--trials", "1"])
        assert r.exit_code == 0, r.output
        assert "study tiny already has 2 finished trials (budget 1); nothing to do" in r.output
    assert len(study.trials) == 2 and "n_trials" not in study.user_attrs  # nothing ran, nothing changed


@pytest.mark.usefixtures("single_thread")
def test_trial_failed_by_another_worker_is_dropped_with_one_line(storage_url, tmp_path, tiny_study, caplog):
    """What a worker that was frozen past the grace period meets when it wakes: its trial failed
    and re-queued by another. It drops the trial quietly and runs the retry itself."""
    from stl_tune.search.state.outcome import Reason, fail_reason, retry
    from stl_tune.train import train

    tiny_study["fixed"]["optim"]["epochs"] = 3
    spec = StudySpec.from_dict(tiny_study)
    url = storage_url
    study = create_or_load_study(spec, None, open_storage(url))
    other = optuna.load_study(study_name=study.study_name, storage=open_storage(url, heartbeat=False))
    calls = []

    def failed_from_outside_after_epoch_1(cfg, on_epoch_end, **kw):
        calls.append(1)

        def cb(m):
            stop = on_epoch_end(m)  # reports and uploads the epoch's checkpoint
            if len(calls) == 1 and m.epoch == 1:  # as the other worker's heartbeat check would
                (t,) = other.get_trials(states=(TrialState.RUNNING,))
                other._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                retry(other, other._storage.get_trial(t._trial_id))
            return stop

        return train(cfg, cb, **kw)

    artifacts = tmp_path / "artifacts"
    with caplog.at_level("WARNING", logger="stl_tune.search.state.outcome"):
        t = work(study, Objective(spec, artifacts, trainer=failed_from_outside_after_epoch_1), 1)
    assert t.finished == 1 and len(calls) == 2
    assert [r.getMessage() for r in caplog.records] == [
        "trial 0 was failed by another worker while this one was paused; its retry goes on"
    ]
    first, resumed = study.trials
    assert first.state == TrialState.FAIL and fail_reason(first) == Reason.DIED  # its attrs as a dead worker's
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["resumed_from_epoch"] == 1
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.slow
def test_a_spent_time_budget_counts_only_the_trials_that_paused(tmp_path, tiny_study, worker_env):
    """The known recipe never started and one trial paused by the time budget: the stop line says
    one paused trial will resume, not two."""
    from stl_tune import config
    from stl_tune.search import record
    from stl_tune.search.spec import warmstart
    from stl_tune.search.state import outcome
    from stl_tune.search.state.outcome import retry

    url, spec = f"sqlite:///{tmp_path}/study.db", StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(url))
    paused = study.ask({})
    paused.set_user_attr(record.FAIL_REASON_ATTR, outcome.Reason.TIME_BUDGET)
    retry(study, study.tell(paused, state=TrialState.FAIL))  # as the outcome of a paused trial is settled
    warmstart.enqueue(study, spec, config.from_dict(None, spec.fixed), record.KNOWN_RECIPE)  # never started
    study.set_user_attr(record.N_TRIALS_ATTR, 2)
    study.set_user_attr(record.DEADLINE_ATTR, "2020-01-01T00:00:00+00:00")
    assert tally(study).waiting == 2
    out = subprocess.run(
        stl_tune("worker", name="tiny", workers=2, storage=url, artifacts=tmp_path / "artifacts"),
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    said = " ".join(out.stdout.split())  # the console wraps at 80 columns
    assert "stopped: time budget spent at 2020-01-01 00:00:00 UTC; 1 paused trial will resume on the next run" in said


@pytest.mark.usefixtures("single_thread")
def test_a_data_error_in_a_trial_stops_the_run_and_keeps_the_recipe_queued(storage_url, tmp_path, tiny_study):
    from stl_tune.data import DataError
    from stl_tune.search import record
    from stl_tune.search.spec import warmstart

    def unreadable(cfg, on_epoch_end=None, **kw):  # e.g. a file replaced after the run's data check
        raise DataError(f"{tmp_path / 'cat' / '3.png'}: cannot read this image (truncated)")

    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(storage_url))
    warmstart.enqueue_known_recipe(study, spec)
    with pytest.raises(DataError, match=r"3\.png: cannot read this image"):  # at once, not after max_failures
        work(study, Objective(spec, tmp_path / "artifacts", trainer=unreadable), 3, max_failures=5)
    first, retry = study.trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "data error"
    assert retry.state == TrialState.WAITING and retry.system_attrs["retry_history"] == [0]
    assert tally(study).failed == 0  # not a failure of the study's configs

    # the data is fixed: the next run runs the known recipe (trial 0's config), to full length
    work(study, Objective(spec, tmp_path / "artifacts"), 1)
    (done,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done.number == retry.number and done.params == first.params
    assert done.user_attrs[record.ENQUEUED_ATTR] == record.KNOWN_RECIPE
    assert done.user_attrs["epochs_run"] == tiny_study["fixed"]["optim"]["epochs"]


def test_a_confirm_worker_stays_for_the_retry_of_a_trial_that_just_died(storage_url):
    """A dead worker's trial is failed, then its retry queued (outcome.requeue_dead): a confirm
    study's worker with nothing left to run between the two stays for the retry and runs it (it
    left, and the run ended with the retry queued and no worker, when the parallel suite made the
    gap long enough to see)."""
    import threading
    import time

    from stl_tune.search import record
    from stl_tune.search.state.outcome import Reason, retry

    study = optuna.create_study(storage=storage_url, study_name="confirm")
    study.set_user_attr(record.QUEUED_ONLY_ATTR, True)
    for x in (0.1, 0.2):
        study.enqueue_trial({"x": x})
    study.tell(study.ask(), 0.5)  # one confirmation done ...
    dying = study.ask()  # ... the other on a worker that dies
    done = {}

    def worker():
        done["tally"] = work(study, lambda t: t.suggest_float("x", 0, 1), 2, poll_s=0.05)

    thread = threading.Thread(target=worker)
    thread.start()
    storage = study._storage
    time.sleep(0.3)  # the worker waits on the running trial
    storage.set_trial_user_attr(dying._trial_id, record.FAIL_REASON_ATTR, Reason.DIED)
    storage.set_trial_state_values(dying._trial_id, TrialState.FAIL)
    time.sleep(0.5)  # the gap, widened: the worker has seen the failed trial and nothing queued
    retry(study, storage.get_trial(dying._trial_id))
    thread.join(timeout=60)
    assert not thread.is_alive() and done["tally"].finished == 2
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
