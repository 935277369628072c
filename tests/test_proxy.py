"""stl-tune proxy: workers reach the database through Optuna's gRPC storage proxy.

The proxy also stands in for the heartbeat that gRPC cannot carry: a trial's writes count as its
heartbeat, and the proxy fails (and re-queues) trials whose worker went silent.
"""

from __future__ import annotations

import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from browser import free_port
from commands import stl_tune
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


@contextmanager
def proxy(db_url: str, *extra: str):
    """A `stl-tune proxy` subprocess in front of db_url; yields its grpc:// URL once it answers."""
    port = free_port()
    server = subprocess.Popen(
        stl_tune("proxy", *extra, gpus=None, storage=db_url, port=port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        try:
            client.wait_server_ready(timeout=60)
        except ConnectionError:
            server.kill()
            raise AssertionError(f"proxy did not start: {server.communicate()[0]}") from None
        yield f"grpc://127.0.0.1:{port}", client
        assert server.poll() is None, f"proxy died: {server.communicate()[0]}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_workers_finish_a_study_through_the_proxy(tmp_path, fake_data, worker_env):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    n = 4
    with proxy(db) as (grpc_url, _):
        run = subprocess.run(
            stl_tune(
                "run",
                study=ROOT / "studies/smoke.yaml",
                storage=grpc_url,
                trials=n,
                workers=3,
                data_dir=fake_data,
                artifacts=tmp_path / "artifacts",
            ),
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
            env=worker_env,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study = optuna.load_study(study_name="smoke", storage=db)  # read back directly, not via the proxy
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n
    assert all("config" in t.user_attrs and t.intermediate_values for t in finished)
    with sqlalchemy.create_engine(db).connect() as c:  # the proxy turned the workers' writes into heartbeats
        beats = c.execute(sqlalchemy.text("SELECT count(DISTINCT trial_id) FROM trial_heartbeats")).scalar()
    assert beats == len(study.trials)


def test_proxy_fails_and_requeues_a_silent_trial_but_not_a_writing_one(tmp_path):
    db = f"sqlite:///{tmp_path / 'study.db'}"
    grace = 3  # seconds
    with proxy(db, "--grace-period", str(grace)) as (_, client):
        study = optuna.create_study(study_name="stale", storage=client, direction="maximize")
        dead, alive = study.ask(), study.ask()
        dead.report(0.1, 1)  # ... and its worker dies: no more writes
        start = time.monotonic()
        state = TrialState.RUNNING
        while state == TrialState.RUNNING or time.monotonic() - start < 2 * grace:
            assert time.monotonic() - start < 60, "the proxy never failed the silent trial"
            alive.report(0.2, int((time.monotonic() - start) * 10) + 1)  # a live worker's per-epoch reports
            time.sleep(0.5)
            state = client.get_trial(dead._trial_id).state
        assert state == TrialState.FAIL
        assert client.get_trial(alive._trial_id).state == TrialState.RUNNING  # writes kept it alive
        retries = study.get_trials(states=(TrialState.WAITING,))
        assert [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in retries] == [dead.number]
        study.tell(alive, 0.2)


def test_proxy_in_front_of_a_proxy_is_refused_at_once_without_waiting():
    """No server listens there: the refusal must come from the URL alone, not after a timeout."""
    from typer.testing import CliRunner

    from stl_tune.cli import app

    r = CliRunner().invoke(app, ["proxy", "--storage", "grpc://user:secret@127.0.0.1:9"])
    assert r.exit_code == 2 and "is a proxy itself; pass the database URL it should serve" in r.output
    assert "secret" not in r.output
