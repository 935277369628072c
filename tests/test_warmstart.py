"""Warm starts and budgets: the known recipe as trial 0, --enqueue, --from-study, and the time and
patience budgets, each on its own (no training: trials are made with optuna.create_trial), on both
storages (the storage_url fixture)."""

from __future__ import annotations

from datetime import timedelta

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from stl_tune import config
from stl_tune.errors import UserError
from stl_tune.search import create_or_load_study, open_storage, record
from stl_tune.search.fmt import parse_duration
from stl_tune.search.spec import warmstart
from stl_tune.search.spec.space import StudySpec, load_study_file
from stl_tune.search.state import limits
from stl_tune.search.worker.keep import is_kept


@pytest.fixture
def seed_spec() -> StudySpec:
    return load_study_file("studies/seed.yaml")


def _study(url: str, spec: StudySpec, name: str | None = None) -> optuna.Study:
    return create_or_load_study(spec, name, open_storage(url, heartbeat=False))


def test_the_known_recipe_is_trial_0_of_a_new_study_only(storage_url, seed_spec):
    study = _study(storage_url, seed_spec)
    queued = warmstart.enqueue_known_recipe(study, seed_spec)
    assert queued.added and queued.outside == {}  # seed.yaml's space holds every default
    assert warmstart.enqueue_known_recipe(study, seed_spec) is None  # not twice, not into a used study
    trial = study.ask()
    assert trial.number == 0 and trial.user_attrs[record.ENQUEUED_ATTR] == record.KNOWN_RECIPE
    from stl_tune.search.spec.space import suggest_config

    cfg, defaults = suggest_config(trial, seed_spec), config.from_dict(None, seed_spec.fixed)
    for path in (
        "model.width",
        "model.se",
        "model.drop_path",
        "optim.lr",
        "optim.weight_decay",
        "optim.batch_size",
        "augment.mix_epochs",
        "smoothing.shape",
        "smoothing.start",
    ):
        assert config.get(cfg, path) == config.get(defaults, path), path


def test_params_of_leaves_values_outside_the_space_to_the_sampler(seed_spec):
    cfg = config.from_dict(None, {"model.width": 80, "optim.lr": 2e-3, "augment.mix_epochs": 30})
    params = warmstart.params_of(cfg, seed_spec)
    assert "model.width" not in params  # 80 is not a choice
    assert "augment.mix_epochs" not in params  # not on the step-20 grid
    assert params["lr_adamw"] == 2e-3 and "lr_sgd" not in params  # the entry whose `when` holds


def test_enqueue_file_queues_an_exported_config(storage_url, tmp_path, seed_spec):
    path = tmp_path / "best.yaml"
    config.dump(config.from_dict(None, {"optim.name": "sgd", "optim.lr": 0.1, "optim.weight_decay": 5e-4}), path)
    study = _study(storage_url, seed_spec)
    queued = warmstart.enqueue(study, seed_spec, config.load(path), str(path))  # as run --enqueue does
    params = queued.params
    assert params["optim.name"] == "sgd" and params["lr_sgd"] == 0.1 and params["wd_sgd"] == 5e-4
    assert queued.added and "not queued again" not in queued.line("x")
    again = warmstart.enqueue(study, seed_spec, config.load(path), str(path))  # the same values again: said, not queued
    assert not again.added and "a trial with these values exists; not queued again" in again.line("x")
    assert len(study.trials) == 1 and study.ask().user_attrs[record.ENQUEUED_ATTR] == str(path)


def test_values_outside_the_space_are_named(storage_url, seed_spec):
    cfg = config.from_dict(None, {"model.width": 80})
    queued = warmstart.enqueue(_study(storage_url, seed_spec), seed_spec, cfg, "x")
    assert queued.outside == {"model.width": 80}
    assert queued.line("queued x").endswith(
        "; outside this study's search space, so not used: model.width=80 "
        "(the sampler draws model.width for this trial from the space)"
    )
    (queued_trial,) = optuna.load_study(study_name=seed_spec.name, storage=storage_url).trials
    assert "model.width" not in queued_trial.system_attrs["fixed_params"]  # as said: the sampler draws it


def test_from_study_copies_the_finished_trials_that_fit(storage_url, tiny_study):
    old_spec = StudySpec.from_dict(tiny_study)
    old = _study(storage_url, old_spec, "old")
    dists = {p.name: p.distribution() for p in old_spec.params}
    for lr, state in (
        (2e-3, TrialState.COMPLETE),
        (8e-3, TrialState.PRUNED),
        (3e-3, TrialState.FAIL),
        (4e-3, TrialState.PRUNED),
    ):
        old.add_trial(
            optuna.trial.create_trial(
                state=state,
                value={TrialState.COMPLETE: 0.5, TrialState.PRUNED: 0.3}.get(state),  # pruned: the last epoch's
                params={"optim.lr": lr, "model.se": True},
                distributions=dists,
                intermediate_values={1: 0.3, 2: 0.5},
                user_attrs={"curve": [0.3, 0.5]},
            )
        )
    tiny_study["search_space"]["optim.lr"]["high"] = 5e-3  # the new space: 8e-3 no longer fits
    new_spec = StudySpec.from_dict({**tiny_study, "name": "new"})
    new = _study(storage_url, new_spec)
    assert warmstart.copy_trials(old, new, new_spec) == (2, 1, 0)  # the FAIL is not a candidate
    assert warmstart.copy_trials(old, new, new_spec) == (0, 1, 2)  # the same command again copies nothing twice
    t, pruned = new.trials
    assert (pruned.state, pruned.value, pruned.params["optim.lr"]) == (TrialState.PRUNED, 0.3, 4e-3)
    assert t.state == TrialState.COMPLETE and t.params == {"optim.lr": 2e-3, "model.se": True}
    assert t.intermediate_values == {1: 0.3, 2: 0.5} and t.user_attrs[record.COPIED_ATTR] == "study old, trial 0"
    from stl_tune.search.state.trials import is_surplus, tally

    assert tally(new).finished == 0 and tally(new).best.number == 0  # teaches, but is not the new budget's
    assert not is_surplus(new, new.ask(), 1)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("45m", 2700), ("6h", 21600), ("1h30m", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "6", "0s", "1d", "h", "-5m"])
def test_bad_durations_are_one_line(text):
    with pytest.raises(UserError, match="--time-budget"):
        parse_duration(text)


def test_deadline_in_the_study_stops_new_trials(storage_url, tiny_study):
    study = _study(storage_url, StudySpec.from_dict(tiny_study))
    assert limits.stop_reason(study) is None
    limits.set_limits(study, timedelta(hours=1), None)
    left = limits.time_left(study.user_attrs)
    assert timedelta(minutes=59) < left <= timedelta(hours=1) and limits.stop_reason(study) is None
    study.set_user_attr(record.DEADLINE_ATTR, (limits.now() - timedelta(seconds=1)).isoformat())
    assert limits.stop_reason(study).startswith("time budget spent at")
    from typer.testing import CliRunner

    from stl_tune.cli import app

    r = CliRunner().invoke(app, ["status", "--storage", storage_url])
    assert r.exit_code == 0 and "time budget: spent (deadline " in r.output, r.output
    limits.set_limits(study, None, None)  # the next run without a budget clears it
    assert limits.stop_reason(study) is None and limits.time_left(study.user_attrs) is None


def test_patience_counts_finished_trials_since_the_best(storage_url, tiny_study):
    study = _study(storage_url, StudySpec.from_dict(tiny_study))
    limits.set_limits(study, None, 3)
    for value in (0.5, 0.7, 0.6, 0.7):  # 0.7 again is not better
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    assert limits.trials_since_best(study.trials, study.direction) == 2 and limits.stop_reason(study) is None
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={}))
    assert limits.stop_reason(study) == "no better trial in the last 3 finished (--patience-trials 3)"
    study.add_trial(optuna.trial.create_trial(value=0.8, params={}, distributions={}))
    assert limits.stop_reason(study) is None


def test_a_runs_patience_counts_its_own_trials_not_earlier_or_copied_ones(storage_url, tiny_study):
    study = _study(storage_url, StudySpec.from_dict(tiny_study))
    for value in (0.9, 0.5, 0.5, 0.5):  # an earlier run: 3 trials since its best
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    study.enqueue_trial({})  # queued before this run sets its budgets (e.g. --enqueue): this run's
    limits.set_limits(study, None, 2)
    assert limits.stop_reason(study) is None  # the 3 earlier trials do not count
    copied = optuna.trial.create_trial(
        value=0.1, params={}, distributions={}, user_attrs={record.COPIED_ATTR: "study old, trial 0"}
    )
    study.add_trial(copied)  # not run here: does not count either
    assert limits.stop_reason(study) is None
    queued = study.ask()
    assert queued.number == 4  # the one queued before the run started
    study.tell(queued, 0.6)
    assert limits.stop_reason(study) is None
    study.tell(study.ask(), 0.7)
    assert limits.stop_reason(study) == "no better trial in the last 2 finished (--patience-trials 2)"


# ------------------------------------------------------------------------ with the worker loop
@pytest.fixture
def pruning_study(storage_url, tiny_study):
    """A study whose median pruner stops any trial at epoch 1: two finished trials scored 0.99."""
    tiny_study["fixed"]["optim"]["epochs"] = 3
    tiny_study["pruner"] = {"name": "median", "n_startup_trials": 0, "n_warmup_steps": 0}
    spec = StudySpec.from_dict(tiny_study)
    study = _study(storage_url, spec)
    dists = {p.name: p.distribution() for p in spec.params}
    for _ in range(2):
        study.add_trial(
            optuna.trial.create_trial(
                value=0.99,
                params={"optim.lr": 5e-3, "model.se": True},
                distributions=dists,
                intermediate_values={1: 0.99, 2: 0.99, 3: 0.99},
            )
        )
    return spec, study


@pytest.mark.usefixtures("single_thread")
def test_an_enqueued_trial_runs_to_full_length_where_others_are_pruned(tmp_path, pruning_study):
    from stl_tune.search.worker.objective import Objective
    from stl_tune.search.worker.workers import work

    spec, study = pruning_study
    warmstart.enqueue(study, spec, config.from_dict(None, spec.fixed), record.KNOWN_RECIPE)
    work(study, Objective(spec, tmp_path / "artifacts"), 4)  # 2 finished + the enqueued + one sampled
    enqueued, sampled = study.trials[2:]
    assert enqueued.user_attrs[record.ENQUEUED_ATTR] == record.KNOWN_RECIPE
    assert enqueued.state == TrialState.COMPLETE and enqueued.user_attrs["epochs_run"] == 3
    assert sampled.state == TrialState.PRUNED and sampled.user_attrs["epochs_run"] == 1


@pytest.mark.usefixtures("single_thread")
def test_a_trial_running_at_the_deadline_pauses_and_resumes_on_the_next_run(
    storage_url, tmp_path, tiny_study, monkeypatch
):
    from stl_tune.search.worker.objective import Objective
    from stl_tune.search.worker.workers import work
    from stl_tune.train import train

    tiny_study["fixed"]["optim"]["epochs"] = 4
    tiny_study["fixed"]["runtime"]["checkpoint_interval_s"] = 1e6  # none by time: the one at the deadline is forced
    spec = StudySpec.from_dict(tiny_study)
    study = _study(storage_url, spec)
    limits.set_limits(study, timedelta(hours=1), None)
    later = limits.now() + timedelta(hours=2)

    def deadline_passes_in_epoch_2(cfg, on_epoch_end, **kw):
        def cb(m):
            stop = on_epoch_end(m)
            if m.epoch == 1:  # as if epoch 2 ended past the deadline
                monkeypatch.setattr(limits, "now", lambda: later)
            return stop

        return train(cfg, cb, **kw)

    artifacts = tmp_path / "artifacts"
    t = work(study, Objective(spec, artifacts, trainer=deadline_passes_in_epoch_2), 2)
    assert t.finished == 0 and limits.stop_reason(study).startswith("time budget spent")
    paused, queued = study.trials
    assert paused.state == TrialState.FAIL and paused.user_attrs["fail_reason"] == "time budget"
    assert paused.user_attrs["checkpoint"]["epoch"] == 2 and any(artifacts.iterdir())
    assert queued.state == TrialState.WAITING

    monkeypatch.undo()
    limits.set_limits(study, None, None)  # the next run, without a time budget
    work(study, Objective(spec, artifacts), 2)
    resumed = study.trials[1]
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs["resumed_from_epoch"] == 2
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 2
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--time-budget", "soon"], "--time-budget 'soon': give hours"),
        (["--enqueue", "missing.yaml"], "missing.yaml"),
        (["--from-study", "nope"], "no study 'nope'"),
    ],
)
def test_bad_warm_start_and_budget_options_are_one_line_and_create_nothing(
    args, needle, storage_url, tmp_path, tiny_study
):
    from typer.testing import CliRunner

    from stl_tune.cli import app

    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    r = CliRunner().invoke(app, ["run", "--study", str(study_file), "--storage", storage_url, "--trials", "1", *args])
    assert r.exit_code == 2 and needle in r.output, r.output
    assert optuna.get_all_study_names(storage_url) == []


def test_from_study_of_the_study_itself_is_one_line_and_copies_nothing(storage_url, tmp_path, tiny_study):
    from typer.testing import CliRunner

    from stl_tune.cli import app

    study = _study(storage_url, StudySpec.from_dict(tiny_study))
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    args = ["run", "--study", str(study_file), "--storage", storage_url, "--trials", "2", "--from-study", "tiny"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--from-study tiny: that is the study this run continues" in r.output, r.output
    assert len(study.trials) == 1
