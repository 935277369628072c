"""Faults with real processes, each on SQLite and on PostgreSQL (the storage_url fixture): a worker
killed with SIGKILL mid-trial, Ctrl-C on `stl-tune run` and a re-run, a worker frozen past the grace
period, and a trial whose loss turns NaN."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from commands import stl_tune
from optuna.trial import FrozenTrial, TrialState

from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.worker.keep import is_kept
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import work

# A run whose dead worker's trial must be re-queued at once, not by the heartbeat, ends within DONE_S
# seconds (several times what it takes alone: the suite runs in parallel on few cores), while the
# heartbeat would wait GRACE_S.
DONE_S, GRACE_S = 240, "600"
pytestmark = pytest.mark.usefixtures("single_thread")  # in-process trainings


def _study_file(tmp_path: Path, tiny_study: dict, epochs: int) -> Path:
    tiny_study["fixed"]["optim"]["epochs"] = epochs  # long enough to stop a trial mid-way
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_study))
    return path


def _wait_for_running(url: str, name: str, count: int, procs: list[subprocess.Popen], timeout: float = 120) -> None:
    """Until `count` trials run at once (on a loaded machine a second worker can still be importing
    torch when the first trial has checkpointed)."""
    deadline = time.monotonic() + timeout
    storage = open_storage(url, heartbeat=False)
    while len(optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))) < count:
        assert all(p.poll() is None for p in procs), "a worker exited early"
        assert time.monotonic() < deadline, f"never {count} trials running at once"
        time.sleep(0.05)


def _wait_for_checkpoint(
    url: str, name: str, procs: list[subprocess.Popen], timeout: float = 120, attr: str = "checkpoint"
) -> FrozenTrial:
    """The first RUNNING trial that has uploaded a checkpoint (>= 1 epoch done), or whose user attr
    `attr` is otherwise set ("curve": an epoch has ended)."""
    deadline = time.monotonic() + timeout
    storage = open_storage(url, heartbeat=False)  # once: a storage per look costs the workers a core on a server
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a worker exited early"
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            trials = []
        for t in trials:
            if t.user_attrs.get(attr):
                return t
        time.sleep(0.05)
    raise AssertionError("no trial reached its first checkpoint")


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow
def test_killed_worker_trial_resumes_from_its_checkpoint(storage_url, tmp_path, tiny_study, worker_env):
    n, name, url, artifacts = 2, "kill", storage_url, tmp_path / "artifacts"
    spec = StudySpec.from_dict(yaml.safe_load(_study_file(tmp_path, tiny_study, epochs=12).read_text()))
    create_or_load_study(spec, name, open_storage(url, heartbeat=False)).set_user_attr("n_trials", n)
    cmd = stl_tune("worker", name=name, storage=url, artifacts=artifacts)
    procs = [subprocess.Popen([*cmd, "--worker-index", str(i)], env=worker_env) for i in range(2)]

    victim = _wait_for_checkpoint(url, name, procs)
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    (dead,) = [p for p in procs if p.pid == pid]
    os.kill(pid, signal.SIGKILL)  # no handler runs: the trial stays RUNNING, its heartbeat stops
    assert dead.wait() == -signal.SIGKILL  # reaped, as its parent (a shell, `stl-tune run`) would
    (survivor,) = [p for p in procs if p is not dead]
    assert survivor.wait(timeout=180) == 0

    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n and set(t.state for t in study.trials) <= {
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    }
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL  # failed by the survivor's stale-heartbeat check
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    epoch = killed.user_attrs["checkpoint"]["epoch"]  # the dead trial's last checkpoint
    assert epoch >= 1 and retry.user_attrs["resumed_from_epoch"] == epoch
    assert retry.user_attrs["curve"][:epoch] == killed.user_attrs["curve"][:epoch]  # the curve continues
    assert len(retry.user_attrs["curve"]) == retry.user_attrs["epochs_run"] == 12
    # not even a partial upload the kill cut short
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]
    assert not list(tmp_path.glob(f"stl-tune-{pid}-*"))  # nor the dead worker's local checkpoint copy


def _check_resumed(study: optuna.Study, victim: FrozenTrial) -> None:
    """The killed trial failed as "worker died"; its retry finished from the dead one's checkpoint."""
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert (killed.user_attrs["status"], killed.user_attrs["fail_reason"]) == ("died", "worker died")
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    assert retry.user_attrs["resumed_from_epoch"] == killed.user_attrs["checkpoint"]["epoch"] >= 1


@pytest.mark.slow
def test_run_requeues_a_killed_workers_trial_at_once(storage_url, tmp_path, tiny_study, worker_env):
    """Without waiting for the heartbeat's grace period (GRACE_S here: the run's timeout is shorter)."""
    n, name, url, artifacts = 2, "reap", storage_url, tmp_path / "artifacts"
    study_file = _study_file(tmp_path, tiny_study, epochs=12)
    cmd = stl_tune("run", study=study_file, name=name, trials=n, workers=2, storage=url, artifacts=artifacts)
    run = subprocess.Popen(
        cmd,
        env={**worker_env, "STL_TUNE_GRACE_PERIOD": GRACE_S},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = _wait_for_checkpoint(url, name, [run])
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    out, _ = run.communicate(timeout=DONE_S)
    assert run.returncode == 0, out
    assert re.search(rf"worker w\d \(pid {pid}\) died \(signal 9\); trial {victim.number} queued to resume", out), out
    assert "Traceback" not in out
    assert re.search(r"\[w\d\] trial \d+ complete 0\.\d{4} after 12 epochs\n", out), out  # one short line per trial
    assert not re.search(r"\[w\d\] \[I ", out)  # instead of Optuna's INFO lines
    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n
    _check_resumed(study, victim)
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.slow
def test_rerun_requeues_the_trial_of_a_dead_run_on_this_host(storage_url, tmp_path, tiny_study, worker_env):
    """`run` and its worker both killed (a closed terminal, a reboot): the next run on this host
    re-queues the orphaned RUNNING trial at once instead of waiting out the grace period."""
    n, name, url, artifacts = 1, "orphan", storage_url, tmp_path / "artifacts"
    study_file = _study_file(tmp_path, tiny_study, epochs=12)
    cmd = stl_tune("run", study=study_file, name=name, trials=n, workers=1, storage=url, artifacts=artifacts)
    env = {**worker_env, "STL_TUNE_GRACE_PERIOD": GRACE_S}
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = _wait_for_checkpoint(url, name, [run])
    run.kill()  # the parent first: it would re-queue its child's trial itself
    run.wait()
    os.kill(int(victim.user_attrs["worker"].rpartition(":")[2]), signal.SIGKILL)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=DONE_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"queued trial {victim.number} of dead workers on this host to resume" in again.stdout
    assert ": 1 trial, 1 worker (CPU)," in again.stdout
    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n
    _check_resumed(study, victim)


@pytest.mark.slow
def test_confirm_survives_a_killed_worker(storage_url, tmp_path, tiny_study, worker_env):
    """`stl-tune confirm` on 2 workers, one killed mid-confirmation: `confirm` re-queues its trial at
    once, the retry resumes from its checkpoint with the same config and seed, and the candidate's
    mean is over all its seeds."""
    from stl_tune.search.state import confirm as CF

    url, artifacts = storage_url, tmp_path / "artifacts"
    spec = StudySpec.from_dict(yaml.safe_load(_study_file(tmp_path, tiny_study, epochs=12).read_text()))
    search = create_or_load_study(spec, None, open_storage(url, heartbeat=False))
    work(search, Objective(spec, artifacts), 1)
    cmd = stl_tune("confirm", storage=url, top=1, seeds=2, workers=2, artifacts=artifacts)
    proc = subprocess.Popen(
        cmd,
        env={**worker_env, "STL_TUNE_GRACE_PERIOD": GRACE_S},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = _wait_for_checkpoint(url, "tiny.confirm", [proc])
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=DONE_S)
    assert proc.returncode == 0, out
    assert re.search(rf"worker w\d \(pid {pid}\) died \(signal 9\); trial {victim.number} queued to resume", out), out

    study = optuna.load_study(study_name="tiny.confirm", storage=url)
    assert (
        len(study.get_trials(states=(TrialState.COMPLETE,))) == 2 and len(study.trials) == 3
    )  # no extra sampled trial
    _check_resumed(study, victim)  # the same params: the seed too
    summary = CF.summarize(study, search)[str(search.best_trial.number)]
    assert summary["seeds"] == [1, 2] and len(summary["values"]) == 2
    assert f"{summary['mean']:.4f} ± {summary['std']:.4f} (n=2) (best)" in out
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.slow
def test_warm_started_run_with_a_time_budget_survives_a_killed_worker(storage_url, tmp_path, tiny_study, worker_env):
    """`run --from-study --enqueue --time-budget` on 2 workers, one killed mid-trial: the old
    study's trials are copied, the recipe and the file are queued, the killed trial resumes from its
    checkpoint, the run stops at the deadline with every running trial paused (exit 0), and the
    next run, without a budget, resumes them and finishes exactly N."""
    from stl_tune import config
    from stl_tune.search import record
    from stl_tune.search.state.export import write_export
    from stl_tune.search.state.trials import tally

    url, artifacts = storage_url, tmp_path / "artifacts"
    spec = StudySpec.from_dict(yaml.safe_load(_study_file(tmp_path, tiny_study, epochs=2).read_text()))
    old = create_or_load_study(spec, "old", open_storage(url, heartbeat=False))  # copied: params, not epochs
    work(old, Objective(spec, artifacts), 2)
    study_file = _study_file(tmp_path, tiny_study, epochs=100)  # trials long beside the gaps between them
    best = tmp_path / "best.yaml"
    write_export(old, None, best)
    cfg = config.load(best)
    cfg.optim.lr = 0.005  # a config not tried yet (an export of a tried one is not queued again)
    config.dump(cfg, best)
    n = 1000  # more than 2 workers can finish in the budget
    cmd = stl_tune("run", study=study_file, name="new", trials=n, workers=2, storage=url, artifacts=artifacts)
    cmd += ["--from-study", "old", "--enqueue", str(best)]
    run = subprocess.Popen(
        [*cmd, "--time-budget", "40s"],
        env={**worker_env, "STL_TUNE_GRACE_PERIOD": GRACE_S},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    victim = _wait_for_checkpoint(url, "new", [run])
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    assert "copied 2 finished trials of study 'old' (0 did not fit this space)" in out
    assert f"queued {best}, run to full length" in out
    assert re.search(rf"worker w\d \(pid {pid}\) died \(signal 9\); trial {victim.number} queued to resume", out), out
    assert re.search(r"^stopped: time budget spent at ", out, re.M), out

    study = optuna.load_study(study_name="new", storage=url)
    recipe, *copied = study.trials[:3]
    assert recipe.user_attrs[record.ENQUEUED_ATTR] == record.KNOWN_RECIPE
    assert [t.params for t in copied] == [t.params for t in old.trials]
    assert study.trials[3].user_attrs[record.ENQUEUED_ATTR] == str(best)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    # A trial running at the deadline pauses at its epoch's end, at a forced checkpoint; one in its
    # last epoch completes instead, and a worker between trials starts none: on a loaded machine the
    # deadline can leave nothing to pause (deterministically: test_warmstart.py's deadline test).
    failed = [t for t in study.get_trials(states=(TrialState.FAIL,)) if t.number != victim.number]
    paused = [t for t in failed if t.user_attrs["fail_reason"] == "time budget"]
    assert paused == failed and all(t.user_attrs["checkpoint"]["epoch"] >= 1 for t in paused)
    finished = tally(study).finished  # the copied trials teach the sampler; they are not the budget's
    assert finished < n

    def retries(of: FrozenTrial) -> list[FrozenTrial]:
        return [t for t in study.trials if (t.system_attrs.get("retry_history") or [None])[-1] == of.number]

    # the next run: those that finished, those that were paused, and the victim if no worker took it up
    n = finished + len(paused) + all(t.state == TrialState.WAITING for t in retries(victim))
    again = subprocess.run(
        [*cmd[: cmd.index("--trials") + 1], str(n), *cmd[cmd.index("--trials") + 2 :]],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    if n == finished:  # the deadline left nothing to resume: all was said above
        assert f"already has {n} finished trials (budget {n}); nothing to do" in again.stdout
    else:
        assert "copied 0 finished trials of study 'old' (0 did not fit this space, 2 copied before)" in again.stdout
        assert f"queued {best}: a trial with these values exists; not queued again" in again.stdout
    study = optuna.load_study(study_name="new", storage=url)
    assert tally(study).finished == n and len(_finished(study)) == n + 2
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for stopped in [study.trials[victim.number], *paused]:  # each went on from its last checkpoint
        (retry,) = retries(stopped)
        assert (
            retry.params == stopped.params
            and retry.user_attrs["resumed_from_epoch"] == stopped.user_attrs["checkpoint"]["epoch"]
        )
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.slow
def test_ctrl_c_on_run_then_run_again_finishes_exactly_n(storage_url, tmp_path, tiny_study, worker_env):
    n, name, url, artifacts = 3, "sigint", storage_url, tmp_path / "artifacts"
    study_file = _study_file(tmp_path, tiny_study, epochs=12)
    cmd = stl_tune("run", study=study_file, name=name, trials=n, workers=2, storage=url, artifacts=artifacts)

    run = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(url, name, [run])
    _wait_for_running(url, name, 2, [run])  # both workers past start-up: each has a line to say
    run.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    assert "Traceback" not in out  # an interrupted trial is one line, not Optuna's traceback
    # one calm line per worker, and nothing from Optuna's logger about a failure or nan
    stops = re.findall(
        r"^\[w(\d)\] (?:trial (\d+) stopped at epoch \d+, queued to resume from (?:epoch \d+|the "
        r"start \(no checkpoint yet\)) as trial \d+|stopped; no trial was running)$",
        out,
        re.M,
    )
    assert sorted(w for w, _ in stops) == ["0", "1"], out
    assert not re.search(r"(?i)trial \d+ failed|failed with|\bnan\b|^\[w\d\] \[W ", out, re.M), out
    study = optuna.load_study(study_name=name, storage=url)
    failed = study.get_trials(states=(TrialState.FAIL,))
    interrupted = [t for t in failed if t.user_attrs["fail_reason"] == "interrupted"]
    assert interrupted and {t.user_attrs["fail_reason"] for t in failed} <= {"interrupted", "surplus"}
    assert sorted(int(n) for _, n in stops if n) == sorted(t.number for t in interrupted)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert len(study.get_trials(states=(TrialState.WAITING,))) == len(interrupted)  # queued to resume

    again = subprocess.run(cmd, env=worker_env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    resumed = [t.user_attrs["resumed_from_epoch"] for t in _finished(study)]
    assert max(resumed) >= 1  # the trial we waited for went on from its checkpoint
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.slow
def test_ctrl_c_finishes_the_epoch_and_checkpoints_it_for_the_retry(
    storage_url, tmp_path, tiny_study, worker_env, monkeypatch
):
    """No timed checkpoint before the end: the one the retry resumes from is the one the stop made,
    at the epoch it stopped at; status reads the trial as stopped, not failed."""
    from typer.testing import CliRunner

    from stl_tune.cli import app
    from stl_tune.cli import views as cli_views

    name, url = "soft", storage_url
    tiny_study["fixed"]["runtime"]["checkpoint_interval_s"] = 3600
    study_file = _study_file(tmp_path, tiny_study, epochs=200)  # far from its end when the signal comes
    cmd = stl_tune(
        "run", study=study_file, name=name, trials=1, workers=1, storage=url, artifacts=tmp_path / "artifacts"
    )
    run = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(url, name, [run], attr="curve")  # its first epoch has ended
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 130, out
    line = r"^\[w0\] trial (\d+) stopped at epoch (\d+), queued to resume from epoch (\d+) as trial (\d+)$"
    m = re.search(line, out, re.M)
    assert m and m[2] == m[3] and int(m[2]) >= 1, out  # resumes at the epoch it stopped at
    study = optuna.load_study(study_name=name, storage=url)
    stopped, retry = study.trials[int(m[1])], study.trials[int(m[4])]
    assert stopped.user_attrs["checkpoint"]["epoch"] == len(stopped.user_attrs["curve"]) == int(m[2])
    assert retry.state == TrialState.WAITING and retry.system_attrs["retry_history"] == [stopped.number]
    monkeypatch.setattr(cli_views.console, "width", 240)  # each note on one line
    r = CliRunner().invoke(app, ["status", "--name", name, "--storage", url])
    assert f"stopped (interrupted), resumes as trial {retry.number}" in r.output, r.output
    assert f"retry of trial {stopped.number}" in r.output and "FAIL" not in r.output, r.output


def test_diverging_trial_fails_with_its_reason_and_the_others_finish(storage_url, tmp_path, tiny_study):
    # SGD at lr 10 with weight decay 1.0 multiplies the weights by about -9 per step: the loss
    # overflows within a few epochs, deterministically (seeded, CPU). lr 0.01 trains normally.
    tiny_study["search_space"] = {"optim.lr": {"type": "categorical", "choices": [0.01, 10.0]}}
    tiny_study["fixed"]["optim"].update(name="sgd", weight_decay=1.0, warmup_epochs=0, epochs=4)
    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(storage_url))
    for lr in (10.0, 0.01, 0.01):
        study.enqueue_trial({"optim.lr": lr})

    work(study, Objective(spec, tmp_path / "artifacts"), 2)

    diverged, *ok = study.trials
    assert diverged.state == TrialState.FAIL and diverged.user_attrs["status"] == "diverged"
    assert re.fullmatch(r"diverged at epoch \d", diverged.user_attrs["fail_reason"])
    assert [t.state for t in ok] == [TrialState.COMPLETE, TrialState.COMPLETE]


def _stop_outside_a_write(pid: int, url: str) -> None:
    """SIGSTOP `pid` at a moment no transaction is open on the storage: frozen in the middle of one,
    it would hold SQLite's write lock (or PostgreSQL's row locks) and block every other worker,
    which is another fault than the one under test."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if not _a_transaction_is_open(url):
            return
        os.kill(pid, signal.SIGCONT)  # it was writing; let it finish
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} never left the database unlocked")


def _a_transaction_is_open(url: str) -> bool:
    import sqlite3

    import sqlalchemy

    from stl_tune.search.storage.urls import sqlite_file

    db = sqlite_file(url)
    if db is not None:
        try:
            with sqlite3.connect(db, timeout=0.5, isolation_level=None) as conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:  # "database is locked"
            return True
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:  # any other session of the database inside a statement or a transaction
            return bool(
                conn.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND (state = 'active' OR state LIKE 'idle in transaction%')"
                    )
                ).scalar()
            )
    finally:
        engine.dispose()


@pytest.mark.slow
def test_frozen_worker_wakes_drops_its_stale_trial_and_goes_on(storage_url, tmp_path, tiny_study, worker_env):
    """A worker frozen past the grace period (a closed laptop lid, a stopped container): another
    worker fails and retries its trial; when it wakes, it drops the trial with one line, no
    traceback, and helps finish the study, which ends with exactly N finished trials."""
    n, name, url, artifacts = 2, "frozen", storage_url, tmp_path / "artifacts"
    spec = StudySpec.from_dict(yaml.safe_load(_study_file(tmp_path, tiny_study, epochs=12).read_text()))
    create_or_load_study(spec, name, open_storage(url, heartbeat=False)).set_user_attr("n_trials", n)
    cmd = stl_tune("worker", name=name, storage=url, artifacts=artifacts)
    procs = [
        subprocess.Popen(
            [*cmd, "--worker-index", str(i)],
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    victim = _wait_for_checkpoint(url, name, procs)
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    (frozen,) = [p for p in procs if p.pid == pid]
    (other,) = [p for p in procs if p is not frozen]
    _stop_outside_a_write(pid, url)
    try:  # the other worker finishes its trial, then finds this one silent past the grace period
        deadline, storage = time.monotonic() + 120, open_storage(url, heartbeat=False)
        while optuna.load_study(study_name=name, storage=storage).trials[victim.number].state != TrialState.FAIL:
            assert time.monotonic() < deadline, "the frozen worker's trial was never failed"
            time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    out_frozen, _ = frozen.communicate(timeout=120)
    out_other, _ = other.communicate(timeout=120)
    assert frozen.returncode == 0 and other.returncode == 0, out_frozen + out_other
    assert "Traceback" not in out_frozen + out_other
    dropped = f"trial {victim.number} was failed by another worker while this one was paused; its retry goes on"
    assert out_frozen.count(dropped) == 1, out_frozen

    study = optuna.load_study(study_name=name, storage=url)
    assert len(_finished(study)) == n
    (retry,) = [t for t in study.trials if t.system_attrs.get("retry_history") == [victim.number]]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]
