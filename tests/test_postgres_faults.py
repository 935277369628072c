"""Faults of the database server itself: PostgreSQL restarted in the middle of a study, or gone
for longer (the session's server, tests/conftest.py); and the count by state that waiting workers
poll instead of the trials, on both storages."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import optuna
import pytest
import yaml
from commands import stl_tune
from optuna.trial import TrialState

from stl_tune.search import open_storage
from stl_tune.search.state.trials import count_states, tally
from stl_tune.search.storage import reconnect
from stl_tune.search.worker import workers


def _connected(run: subprocess.Popen, port: int, workers: int = 4) -> bool:
    """Whether all `workers` worker processes of `run` hold a connection to the server: each has
    opened its storage. A worker still opening it when the server goes meets a refusal, not a lost
    connection, and fails at once, as a mistyped URL must (test_storages.py)."""
    import psutil

    try:
        procs = [p for p in psutil.Process(run.pid).children(recursive=True) if "worker" in p.cmdline()]
        return len(procs) == workers and all(
            any(c.raddr and c.raddr.port == port for c in p.net_connections(kind="tcp")) for p in procs
        )
    except psutil.NoSuchProcess:  # one ended meanwhile: look again
        return False


@pytest.mark.slow
def test_workers_ride_out_a_postgres_restart(postgres, postgres_url, tiny_study, worker_env, tmp_path):
    """Four workers, trials in flight, the server restarted: no worker dies, no trial fails or is
    re-run, and the study ends with exactly N finished trials.

    The server stays down for 2 s, longer than a heartbeat interval (1 s), so every running trial's
    worker meets the outage however the restart falls; the grace period is longer than the outage,
    as in production (180 s against a restart's seconds), so that no trial is taken for dead."""
    worker_env = {**worker_env, "STL_TUNE_GRACE_PERIOD": "15"}
    n, name, artifacts = 6, "restart", tmp_path / "artifacts"
    tiny_study["fixed"]["optim"]["epochs"] = 3  # each trial writes to the database every epoch
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    cmd = stl_tune("run", study=study_file, name=name, trials=n, workers=4, storage=postgres_url, artifacts=artifacts)
    run = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, storage = time.monotonic() + 120, open_storage(postgres_url, heartbeat=False)
        while True:  # restart once a trial has finished and others run: every kind of call is in use
            assert run.poll() is None and time.monotonic() < deadline, "the study ended before the restart"
            try:
                states = [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
            except KeyError:  # not created yet
                states = []
            if (
                TrialState.COMPLETE in states
                and states.count(TrialState.RUNNING) >= 2
                and _connected(run, postgres.port)
            ):
                break
            time.sleep(0.2)
        with postgres.stopped():
            time.sleep(2)
        out, _ = run.communicate(timeout=180)
    finally:
        run.kill()

    assert run.returncode == 0, out
    assert "Traceback" not in out and " died" not in out and "exited with code" not in out, out
    assert "database connection lost" in out and "database connection back" in out, out  # they met it
    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    # Nothing failed but surplus claims: no trial was lost to the restart, and none was re-run (a
    # retry follows a failed trial), so no trial's work counts twice.
    failed = [t for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert [(t.state, t.user_attrs.get("fail_reason")) for t in failed] == [(TrialState.FAIL, "surplus")] * len(failed)


def test_a_server_gone_for_longer_fails_the_call(postgres, postgres_url, monkeypatch, caplog):
    storage = open_storage(postgres_url, heartbeat=False)
    monkeypatch.setattr(reconnect, "RECONNECT_S", 1)
    with postgres.stopped(), pytest.raises(optuna.exceptions.StorageInternalError) as e:
        storage.get_all_studies()
    assert reconnect.lost_server(e.value) is not None
    lost = [r.getMessage() for r in caplog.records if "database connection lost" in r.getMessage()]
    assert len(lost) == 1 and "retrying for up to 1 s" in lost[0]  # one line for all the attempts
    assert storage.get_all_studies() is not None  # and it works again once the server is back


def test_a_refused_request_is_not_retried(postgres_url, caplog):
    storage = open_storage(postgres_url, heartbeat=False)
    with pytest.raises(optuna.exceptions.StorageInternalError) as e:  # longer than the column
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "x" * 1000)
    assert reconnect.lost_server(e.value) is None
    assert not [r for r in caplog.records if "database connection" in r.getMessage()]


def test_count_states_counts_every_trial_like_a_tally(storage_url):
    study = optuna.create_study(study_name="count", storage=open_storage(storage_url, heartbeat=False))
    assert (reconnect.database_of(study) is not None) == storage_url.startswith("postgresql")  # the GROUP BY there
    assert count_states(study) == Counter()
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(optuna.create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None))
    study.ask()
    study.enqueue_trial({})
    want = Counter(
        {TrialState.COMPLETE: 2, TrialState.PRUNED: 1, TrialState.FAIL: 1, TrialState.RUNNING: 1, TrialState.WAITING: 1}
    )
    assert count_states(study) == tally(study).states == want


def test_a_waiting_worker_looks_less_often_while_nothing_changes(storage_url, monkeypatch):
    """The budget is all in flight in two trials of other workers: this worker waits, its pause
    doubling while nothing changes and starting over after a change, until the budget is met."""
    study = optuna.create_study(storage=open_storage(storage_url, heartbeat=False))
    others = [study.ask(), study.ask()]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) in (5, 7):  # another worker's trial ends after this pause
            study.tell(others.pop(), 0.5)

    monkeypatch.setattr(workers.time, "sleep", sleep)
    t = workers.work(study, lambda trial: pytest.fail("no trial of its own: the budget is in flight"), 2)
    assert t.finished == 2
    assert pauses == [1, 2, 4, 8, 10, 1, 2]
