"""The live view and what it says: running trials' rows in 80 columns, plain log lines, the time
left from known epoch times (the same in `stl-tune status`), the start-up check on a CPU host, and
a quiet stop on SIGTERM."""

from __future__ import annotations

import io
import random
import re
import signal
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from commands import stl_tune
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from rich.console import Console
from typer.testing import CliRunner

from stl_tune.cli import app
from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search.record import ENQUEUED_ATTR, N_TRIALS_ATTR
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state.trials import tally
from stl_tune.search.views.eta import EpochsRun, estimate
from stl_tune.search.views.live import View
from stl_tune.search.worker import probe
from stl_tune.search.worker.epochlog import EpochLog
from stl_tune.train import EpochMetrics

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but tab and newline
# Optuna's logger on a failed trial ("Trial 0 failed with parameters ... The value nan is not
# acceptable"), its warnings, and tracebacks
OPTUNA_FAILURE = re.compile(r"(?i)trial \d+ failed|failed with|\bnan\b|Traceback|^\[W ", re.M)
SPEC = {
    "name": "eta",
    "search_space": {
        "model.width": {"type": "categorical", "choices": [32, 64]},
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    },
    "fixed": {"optim": {"epochs": 10}},
    "sampler": {"name": "random"},
    "pruner": {"name": "none"},
}
DISTRIBUTIONS = {"model.width": CategoricalDistribution([32, 64]), "optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}


# ------------------------------------------------------------------------------- epochs per trial
def _simulated_epochs(pruner: optuna.pruners.BasePruner, epochs: int, n: int = 300) -> float:
    """Mean epochs of n trials under an Optuna pruner, each reporting a constant random value."""
    rng = random.Random(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="sim", direction="maximize", pruner=pruner)
    total = 0
    for _ in range(n):
        trial, value = study.ask(), rng.random()
        for step in range(1, epochs + 1):
            trial.report(value, step)
            if step < epochs and trial.should_prune():
                break
        total += step
        study.tell(
            trial, value if step == epochs else None, state=TrialState.COMPLETE if step == epochs else TrialState.PRUNED
        )
    return total / n


def test_epochs_per_trial_follow_the_pruners_rungs():
    # By hand: halving by 2 from epoch 1 over 4 epochs stops at 1 (1/2), 2 (1/4) or runs all 4 (1/4).
    halving = EpochsRun.under({"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}, 4)
    assert halving.stops == {1: 0.5, 2: 0.25, 4: 0.25} and halving.mean() == 2.0
    assert halving.left(2) == pytest.approx(1.0)  # E[T | T >= 2] = (2 + 4) / 2
    # Hyperband over the same: 3 brackets, Optuna's budgets 4, 3, 3; their means 2, 3, 4.
    hyperband = EpochsRun.under({"name": "hyperband", "min_resource": 1, "reduction_factor": 2, "max_resource": 4}, 4)
    assert hyperband.mean() == pytest.approx((4 * 2 + 3 * 3 + 3 * 4) / 10)
    shared = {"name": "hyperband_shared", "min_resource": 1, "reduction_factor": 2, "max_resource": 4}
    assert EpochsRun.under(shared, 4) == hyperband  # its pruning is Hyperband's
    assert EpochsRun.under({"name": "none"}, 7).stops == {7: 1.0}
    assert EpochsRun.under({"name": "median"}, 7).mean() == 7  # no schedule to model: full length

    # Against Optuna's own pruners on 300 trials: the model is the rungs' nominal 1/eta, Optuna
    # promotes floor(n/eta) of n, a little fewer.
    for pruner, options, epochs in [
        (
            optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
            {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2},
            8,
        ),
        (
            optuna.pruners.HyperbandPruner(min_resource=2, max_resource=27, reduction_factor=3),
            {"name": "hyperband", "min_resource": 2, "reduction_factor": 3, "max_resource": 27},
            27,
        ),
    ]:
        assert EpochsRun.under(options, epochs).mean() == pytest.approx(_simulated_epochs(pruner, epochs), rel=0.15)


# ------------------------------------------------------------------------------------ time left
def _trial(state: TrialState, seconds: list[float], width: int = 32, **attrs) -> optuna.trial.FrozenTrial:
    done = len(seconds) if state == TrialState.RUNNING else 10
    return optuna.create_trial(
        state=state,
        value=0.5 if state == TrialState.COMPLETE else None,
        params={"model.width": width, "optim.lr": 0.001234},
        distributions=DISTRIBUTIONS,
        user_attrs={"epoch_seconds": seconds, "curve": [0.25] * done, **attrs},
    )


def _known_study(tmp_path: Path, scale: float = 1.0) -> tuple[optuna.Study, str]:
    """Budget 6, no pruner, 10 epochs a trial: two complete trials at 2 s/epoch, two running ones
    at epoch 4 (3 s/epoch, and 1 s/epoch with a slow first epoch), two still to start; the
    seconds times `scale`."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = create_or_load_study(StudySpec.from_dict(SPEC), None, open_storage(url, heartbeat=False))
    study.set_user_attr(N_TRIALS_ATTR, 6)
    for _ in range(2):
        study.add_trial(_trial(TrialState.COMPLETE, [2.0 * scale] * 10))
    host = socket.gethostname()
    study.add_trial(_trial(TrialState.RUNNING, [3.0 * scale] * 4, worker=f"{host}:101"))
    study.add_trial(_trial(TrialState.RUNNING, [s * scale for s in (9, 1, 1, 1)], width=64, worker="gpu-7.example:55"))
    return study, url


@pytest.fixture
def known_study(tmp_path) -> tuple[optuna.Study, str]:
    return _known_study(tmp_path)


def test_time_left_from_known_epoch_times(known_study):
    study, url = known_study
    left = estimate(study.get_trials(), 6, tally(study).finished, StudySpec.from_dict(SPEC))
    # running: 6 epochs left at 3 s + 6 at 1 s (the median: the slow first epoch left out) = 24 s;
    # to start: 2 trials x 10 epochs x 2 s (the mean of the four trials' medians 2, 2, 3, 1) = 40 s;
    # two trials at once: 64 / 2
    assert (left.to_start, left.running, left.pace, left.seconds) == (2, 2, 2.0, 32.0)

    # A pruner that halves by 2 from epoch 1: a trial runs 1 (1/2), 2 (1/4), 4 (1/8), 8 (1/16) or
    # 10 epochs (1/16), 2.625 on average; a running one at epoch 4 has ahead of it
    # E[T | T >= 4] - 4 = (4/8 + 8/16 + 10/16) / (1/4) - 4 = 2.5.
    halving = StudySpec.from_dict(
        {**SPEC, "pruner": {"name": "successive_halving", "min_resource": 1, "reduction_factor": 2}}
    )
    left = estimate(study.get_trials(), 6, 2, halving)
    assert left.expected_epochs == pytest.approx(2.625)
    assert left.seconds == pytest.approx((2.5 * 3 + 2.5 * 1 + 2 * 2.625 * 2) / 2)

    # A queued trial (the known recipe, --enqueue) is never pruned: one still to start counts in full.
    study.enqueue_trial({"model.width": 32, "optim.lr": 0.001234}, user_attrs={ENQUEUED_ATTR: "known recipe"})
    left = estimate(study.get_trials(), 6, 2, halving)
    assert left.seconds == pytest.approx((2.5 * 3 + 2.5 * 1 + (10 + 2.625) * 2) / 2)

    assert estimate(study.get_trials(), 2, 2, halving).seconds == 0  # the budget is met
    fresh = estimate([], 6, 0, halving)
    assert fresh.seconds is None and str(fresh) == "time left: known after the first epoch"


def test_status_shows_the_same_time_left(tmp_path):
    study, url = _known_study(tmp_path, scale=60)  # 32 s becomes 32 min
    left = estimate(study.get_trials(), 6, 2, StudySpec.from_dict(SPEC))
    assert left.seconds == 32 * 60 and str(left) == "about 32 min left"
    r = CliRunner().invoke(app, ["status", "--storage", url], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "about 32 min left" in r.output and "2 trials to start, 2 running" in r.output


# ---------------------------------------------------------------------------------- the views
def test_running_trials_fit_an_80_column_terminal(known_study):
    study, _ = known_study
    view = View(study, 6, Console(), {101: "w0"})
    t = tally(study)
    trials = study.get_trials()
    running = sorted((tr for tr in trials if tr.state == TrialState.RUNNING), key=view._order)
    seed_like = {f"section.parameter_{i}": FloatDistribution(0.0, 1.0) for i in range(8)}  # far wider than 80
    running.append(
        optuna.create_trial(
            state=TrialState.RUNNING,
            params={k: 0.123456 for k in seed_like},
            distributions=seed_like,
            user_attrs={
                "worker": "a-very-long-host-name.example.org:1234567",
                "curve": [0.5] * 123,
                "epoch_seconds": [1234.5],
                "config": {"optim": {"epochs": 200}},
            },
        )
    )
    console = Console(width=80, record=True, file=io.StringIO(), force_terminal=True)
    console.print(view.render(t, running, estimate(trials, 6, t.finished, view.spec)))
    text = console.export_text()
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80, text
    assert "study eta: 2/6 finished (0 pruned), 0 failed, 0 queued; best 0.5000" in text
    assert "2 running; less than a minute left" in text
    rows = [line for line in lines if re.match(r"^│\s+-?\d", line)]
    assert len(rows) == 3, text
    assert re.search(r"│\s+2 │ w0\s+│\s+4/10 │ 0\.2500 │\s+3 │ width=32 lr=0\.00123", rows[0]), (
        text
    )  # this host's first
    assert re.search(r"│\s+3 │ gpu-7:55\s+│\s+4/10 │ 0\.2500 │\s+1 │ width=64", rows[1]), text
    assert re.search(r"│ a-very-long-h… │ 123/200 │ 0\.5000 │\s+1234 │ parameter_0=0\.123 .*… │$", rows[2]), text


def test_log_lines_are_plain_and_spaced(known_study):
    """A worker's epochs in a log: the first, then at most one line per LOG_EVERY_S; no control
    characters. The launcher's study line only when the count of finished trials changes."""
    out = io.StringIO()
    console = Console(file=out, width=80)  # not a terminal
    now = [0.0]
    log = EpochLog(console, every=5, clock=lambda: now[0])
    seen = []

    class Stand:  # an Objective's face: a trainer attribute, called with the trial
        def __init__(self):
            self.trainer = self.train

        def train(self, cfg, on_epoch_end, **kw):
            for epoch in range(1, 13):
                now[0] = epoch * 2.0  # 2 s an epoch
                m = EpochMetrics(
                    epoch=epoch,
                    train_loss=1.0,
                    val_acc=0.1 * epoch,
                    lr=0.1,
                    label_smoothing=0.0,
                    seconds=2.0,
                    checkpointed=False,
                )
                seen.append(on_epoch_end(m))
            return 0.9

        def __call__(self, trial):
            return self.trainer(probe.reference_config(StudySpec.from_dict(SPEC)), lambda m: m.epoch == 99)

    study = optuna.create_study()
    trial = study.ask({"model.width": CategoricalDistribution([32, 64])})
    assert log.around(Stand())(trial) == 0.9
    assert seen == [False] * 12  # the trainer's own callback still decides
    lines = out.getvalue().splitlines()
    assert [re.match(r"trial 0: epoch (\d+)/10", line)[1] for line in lines] == ["1", "4", "7", "10"]
    assert lines[0].endswith(f"val 0.1000, 2 s/epoch (width={trial.params['model.width']})")
    assert not CONTROL.search(out.getvalue())

    out = io.StringIO()
    view = View(known_study[0], 6, Console(file=out, width=80), {})
    assert view.live is None
    view.refresh()
    view.refresh()  # nothing finished since: nothing written
    (line,) = out.getvalue().splitlines()
    assert line.startswith("study eta: 2/6 finished") and line.endswith("; less than a minute left")


# ---------------------------------------------------------------------------- start-up check
def test_start_up_check_says_what_a_trial_costs_on_a_cpu(tiny_study, tmp_path, monkeypatch):
    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=False))
    cfg = probe.reference_config(spec)
    cost = probe.trial_cost(cfg, 180, threads=1)
    assert cost.steps == 180 // 32 and cost.epochs == 2 and cost.step_s > 0 and cost.eval_s > 0

    assert probe.cost_note(spec, study, [None], None, 1) is None  # a tiny study: seconds, nothing said
    monkeypatch.setattr(probe, "COST_NOTE_S", 0)
    assert probe.cost_note(spec, study, ["0"], None, 1) is None  # a GPU slot: nothing said
    line = probe.cost_note(spec, study, [None], None, 1)
    assert re.fullmatch(
        r"note: no GPU in use: one trial \(width 4, batch 32, 16 px, 2 epochs\) takes about .+ on this CPU "
        r"\(5 steps of .+ s \+ .+ s of validation per epoch, 1 threads\); use a GPU \(--gpus\), a smaller "
        r"study \(--study studies/smoke.yaml\) or --time-budget",
        line,
    )
    study.add_trial(_trial(TrialState.COMPLETE, [1.0]))
    assert probe.cost_note(spec, study, [None], None, 1) is None  # trials have run: the time left says it


def test_reference_config_is_the_recipe_moved_into_the_space():
    spec = StudySpec.from_dict(
        {
            "name": "r",
            "search_space": {
                "model.width": {"type": "int", "low": 4, "high": 8},  # default 64: above
                "optim.batch_size": {"type": "categorical", "choices": [16, 32]},  # default 64: not a choice
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},  # default 1e-3: inside
            },
        }
    )
    cfg = probe.reference_config(spec)
    assert (cfg.model.width, cfg.optim.batch_size, cfg.optim.lr) == (8, 16, 1e-3)


# ------------------------------------------------------------------------------- a quiet stop
@pytest.mark.slow
@pytest.mark.usefixtures("single_thread")
def test_sigterm_on_a_worker_is_one_calm_line(storage_url, tmp_path, tiny_study, worker_env):
    """A scheduler's SIGTERM: the worker's trial stops, is queued to resume from its checkpoint,
    and the worker says so in one line; nothing from Optuna about a failure or nan."""
    from test_faults import _wait_for_checkpoint

    tiny_study["fixed"]["optim"]["epochs"] = 12
    name, url = "term", storage_url
    create_or_load_study(StudySpec.from_dict(tiny_study), name, open_storage(url, heartbeat=False))
    cmd = stl_tune("worker", name=name, storage=url, trials=1, artifacts=tmp_path / "artifacts")
    proc = subprocess.Popen(cmd, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(url, name, [proc])
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out

    study = optuna.load_study(study_name=name, storage=url)
    stopped = study.trials[0]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"] == "interrupted"
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    saved, done = stopped.user_attrs["checkpoint"]["epoch"], len(stopped.user_attrs["curve"])
    assert saved == done >= 1  # the epoch under way finished and was checkpointed
    assert (
        out.splitlines()[-1]
        == f"trial 0 stopped at epoch {done}, queued to resume from epoch {saved} as trial {retry.number}"
    )
    assert not re.search(OPTUNA_FAILURE, out), out
    assert re.search(r"^trial 0: epoch 1/12, val \d\.\d{4}, .+ s/epoch \(lr=.+ se=(True|False)\)$", out, re.M), out
    assert not CONTROL.search(out)


def test_a_trial_past_its_last_epoch_is_not_done(tmp_path):
    """A running trial whose every epoch is reported but which is not told yet leaves no epochs:
    that is not "done" while it runs (budget 3: 2 complete, 1 at 10/10)."""
    study, _ = _known_study(tmp_path)
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    trials = [*[t for t in study.get_trials() if t.state == TrialState.COMPLETE], running[0]]
    running[0].user_attrs["curve"] = [0.25] * 10
    left = estimate(trials, 3, 2, StudySpec.from_dict(SPEC))
    assert left.seconds == 0 and str(left) == "less than a minute left" and "none running" not in left.detail()
    assert str(estimate(trials[:2], 2, 2, StudySpec.from_dict(SPEC))) == "done"  # the budget met, nothing runs


def test_no_time_left_is_told_once_the_time_budget_is_spent(tmp_path):
    from stl_tune.search.record import DEADLINE_ATTR

    study, url = _known_study(tmp_path, scale=60)
    study.set_user_attr(DEADLINE_ATTR, "2020-01-01T00:00:00+00:00")
    out = io.StringIO()
    View(study, 6, Console(file=out, width=200), {}).refresh()
    assert out.getvalue().rstrip().endswith("; stopped: time budget spent at 2020-01-01 00:00:00 UTC"), out.getvalue()
    r = CliRunner().invoke(app, ["status", "--storage", url], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "2/6 finished; stopped: time budget spent at 2020-01-01 00:00:00 UTC" in r.output
    assert " left" not in r.output.replace("time budget: spent", ""), r.output  # no "about 32 min left"


def test_the_best_trial_reads_the_same_in_every_view():
    from stl_tune.search.fmt import best_line

    trial = optuna.trial.create_trial(value=0.81234, params={}, distributions={})
    assert best_line(trial) == f"best 0.8123 (trial {trial.number})"
    assert best_line(None) == "no complete trial yet"
