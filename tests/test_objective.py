"""The objective in this process with the real trainer on fake data, run by the worker loop: what
each trial records, pruning, failures, and an exact resume from the artifact store after an
interruption."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from stl_tune import config as C
from stl_tune.search import create_or_load_study, open_storage
from stl_tune.search import optuna_compat as compat
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.worker.keep import is_kept
from stl_tune.search.worker.objective import Objective
from stl_tune.search.worker.workers import work
from stl_tune.train import train

pytestmark = pytest.mark.usefixtures("single_thread")  # in-process trainings


@pytest.fixture
def setup(storage_url: str, tmp_path: Path, tiny_study: dict):
    """(spec, study on a fresh storage of each kind, artifact folder)."""
    spec = StudySpec.from_dict(tiny_study)
    study = create_or_load_study(spec, None, open_storage(storage_url))
    return spec, study, tmp_path / "artifacts"


def test_trial_records_config_curve_and_result(setup, fake_data, tmp_path):
    spec, study, artifacts = setup
    other = tmp_path / "elsewhere"
    other.symlink_to(fake_data)  # the same images under another name: only the override can set it
    work(study, Objective(spec, artifacts, {"data.dir": str(other)}), 1)

    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    cfg = C.from_dict(t.user_attrs["config"])  # loads back: a complete, valid config
    assert cfg.optim.lr == t.params["optim.lr"] and cfg.model.se == t.params["model.se"]
    assert cfg.data.dir == str(other) and cfg.model.width == 4  # override and fixed values
    curve = t.user_attrs["curve"]
    assert len(curve) == t.user_attrs["epochs_run"] == cfg.optim.epochs
    assert all(0.0 <= a <= 1.0 for a in curve)
    assert t.value == max(curve)  # the objective is best_val_acc
    assert t.intermediate_values == {e: a for e, a in enumerate(curve, 1)}
    assert t.user_attrs["status"] == "completed" and t.user_attrs["fail_reason"] is None
    assert t.user_attrs["param_count"] > 0 and t.user_attrs["seconds"] > 0
    assert t.user_attrs["device"] == "cpu" and t.user_attrs["resumed_from_epoch"] == 0
    assert t.user_attrs["checkpoint"] is None  # nothing left to resume: what is left is kept for an ensemble
    tid = compat.trial_id(t)
    assert sorted(f.name for f in artifacts.iterdir()) == [f"ensemble-{tid}-model", f"ensemble-{tid}-predictions"]
    assert t.user_attrs["kept"] == {
        "predictions": f"ensemble-{tid}-predictions",
        "model": f"ensemble-{tid}-model",
        "value": t.value,
    }


def test_pruned_trial_keeps_its_curve_and_no_checkpoint(storage_url, tmp_path, tiny_study):
    tiny_study["fixed"]["optim"]["epochs"] = 3
    spec = StudySpec.from_dict(tiny_study)
    artifacts = tmp_path / "artifacts"
    pruner = optuna.pruners.ThresholdPruner(lower=1.01)  # below 101 % accuracy: prune at once
    pruned = optuna.create_study(storage=open_storage(storage_url), pruner=pruner)
    work(pruned, Objective(spec, artifacts), 1)

    (t,) = pruned.trials
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["status"] == "pruned" and t.user_attrs["epochs_run"] == 1
    assert len(t.user_attrs["curve"]) == 1
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]


def test_failing_trial_is_recorded_and_the_worker_goes_on(setup):
    spec, study, artifacts = setup
    calls = []

    def out_of_memory_once(cfg, on_epoch_end=None, **kw):
        calls.append(cfg)
        if len(calls) == 1:  # the first trial dies before its first epoch ends
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(cfg, on_epoch_end, **kw)

    work(study, Objective(spec, artifacts, trainer=out_of_memory_once), 1)

    failed, ok = study.trials
    assert failed.state == TrialState.FAIL and ok.state == TrialState.COMPLETE
    assert failed.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert failed.user_attrs["status"] == "failed" and "config" in failed.user_attrs


@pytest.mark.parametrize("lag", [0, 1], ids=["checkpoint-at-interrupt", "checkpoint-an-epoch-earlier"])
def test_interrupted_trial_resumes_from_its_checkpoint_exactly(setup, tiny_study, lag):
    """lag 1: epoch 2 was reported but not checkpointed (runtime.checkpoint_interval_s), so the
    retry trains and reports epoch 2 again: once, without Optuna's "already reported" warning."""
    tiny_study["fixed"]["optim"]["epochs"] = 3
    spec = StudySpec.from_dict(tiny_study)
    _, study, artifacts = setup

    def interrupted_after_epoch_2(cfg, on_epoch_end, **kw):
        def cb(m):
            if m.epoch > 2 - lag:
                m.checkpointed = False  # as if the checkpoint interval had not passed yet
            stop = on_epoch_end(m)  # reports and uploads the epoch's checkpoint first
            if m.epoch == 2:
                raise KeyboardInterrupt  # as a Ctrl-C between two epochs would
            return stop

        return train(cfg, cb, **kw)

    params = {"optim.lr": 3e-3, "model.se": True}
    study.enqueue_trial(params)
    with pytest.raises(KeyboardInterrupt):
        work(study, Objective(spec, artifacts, trainer=interrupted_after_epoch_2), 1)

    first, retry = study.trials  # the worker queued a retry of the interrupted trial
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == "interrupted"
    assert first.user_attrs["checkpoint"]["epoch"] == 2 - lag and len(list(artifacts.iterdir())) == 1
    assert len(first.intermediate_values) == 2
    assert retry.state == TrialState.WAITING

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        work(study, Objective(spec, artifacts), 1)  # the next run
    assert not [w for w in caught if "already reported" in str(w.message)]
    study.enqueue_trial(params)
    work(study, Objective(spec, artifacts), 2)  # the same trial, never interrupted

    _, resumed, reference = study.trials
    assert resumed.state == TrialState.COMPLETE and resumed.params == params
    assert resumed.system_attrs["retry_history"] == [first.number]
    assert resumed.user_attrs["resumed_from_epoch"] == 2 - lag
    assert resumed.user_attrs["curve"][:2] == first.user_attrs["curve"]
    assert resumed.user_attrs["curve"] == reference.user_attrs["curve"]  # exact resume
    assert resumed.intermediate_values == reference.intermediate_values  # each epoch reported once
    assert resumed.value == reference.value
    assert not [f for f in artifacts.iterdir() if not is_kept(f.name)]  # the finished trial's checkpoint was removed


def test_a_stop_after_the_epochs_save_was_decided_stops_at_the_next_epoch_with_its_checkpoint(setup, tiny_study):
    """A Ctrl-C that lands between the trainer's checkpoint decision and the end of the epoch: the
    trial goes on to the next epoch, whose checkpoint the stop forces, and stops there."""
    tiny_study["fixed"]["optim"]["epochs"] = 4
    tiny_study["fixed"]["runtime"]["checkpoint_interval_s"] = 3600  # no checkpoint but the forced ones
    spec = StudySpec.from_dict(tiny_study)
    _, study, artifacts = setup
    asked = []

    def stop_lands_late_in_epoch_2(cfg, on_epoch_end, **kw):
        def cb(m):
            if m.epoch == 2:
                asked.append(m.epoch)  # after the trainer decided epoch 2's save, before its end
            return on_epoch_end(m)

        return train(cfg, cb, **kw)

    objective = Objective(spec, artifacts, trainer=stop_lands_late_in_epoch_2, stop_requested=lambda: bool(asked))
    with pytest.raises(KeyboardInterrupt):
        work(study, objective, 1)
    first = study.trials[0]
    assert first.user_attrs["fail_reason"] == "interrupted"
    assert len(first.user_attrs["curve"]) == first.user_attrs["checkpoint"]["epoch"] == 3


def test_last5_objective_is_the_mean_of_the_last_five_epochs():
    from stl_tune.search.worker.objective import objective_value
    from stl_tune.train import TrainResult

    accs = [0.2, 0.9, 0.5, 0.6, 0.7, 0.8, 0.6]  # a lucky epoch 2 does not make the value
    result = TrainResult(
        status="completed",
        epochs_run=7,
        best_val_acc=max(accs),
        val_acc=accs[-1],
        history=[{"epoch": i + 1, "val_acc": a} for i, a in enumerate(accs)],
    )
    assert objective_value(result, "last5_val_acc") == pytest.approx(sum(accs[-5:]) / 5)
    assert objective_value(result, "best_val_acc") == 0.9 and objective_value(result, "val_acc") == 0.6
    result.history = result.history[:2]  # fewer epochs than five: the mean of those
    assert objective_value(result, "last5_val_acc") == pytest.approx(0.55)


def test_a_failed_trials_model_is_freed_before_the_next_trial(setup, monkeypatch):
    """The failure's traceback holds train()'s frames: unless they are cleared, the model (on a GPU,
    its memory) outlives the trial while Optuna holds the exception."""
    import gc
    import weakref

    spec, study, artifacts = setup
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # take the GPU clean-up path
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    models = []

    def fails_holding_a_model(cfg, on_epoch_end=None, **kw):
        model = torch.nn.Linear(4, 4)
        models.append(weakref.ref(model))
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    failure = Objective(spec, artifacts, trainer=fails_holding_a_model)(study.ask()).error  # kept by the outcome
    gc.collect()
    assert isinstance(failure, RuntimeError)
    assert failure.__traceback__ is not None and models[0]() is None


def test_a_cpu_worker_trains_auto_on_the_cpu_where_cuda_is_available(setup, monkeypatch):
    spec, study, artifacts = setup
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    devices = []

    def records_the_device(cfg, on_epoch_end=None, **kw):
        devices.append(cfg.runtime.device)
        raise ValueError("stop here")

    for cpu in (True, False):
        outcome = Objective(spec, artifacts, {"runtime.device": "auto"}, trainer=records_the_device, cpu=cpu)(
            study.ask()
        )
        assert isinstance(outcome.error, ValueError)
    assert devices == ["cpu", "auto"]
    assert [t.user_attrs["config"]["runtime"]["device"] for t in study.trials] == ["auto", "auto"]  # as sampled


def test_epoch_seconds_leave_out_the_compile(setup):
    """The time left is paced by epoch_seconds: a compiled first epoch's tens of seconds of
    compiling are not training pace."""
    from stl_tune.train import EpochMetrics

    spec, study, artifacts = setup

    def compiles_then_fails(cfg, on_epoch_end=None, **kw):
        on_epoch_end(EpochMetrics(1, 2.0, 0.1, 1e-3, 0.0, seconds=31.5, checkpointed=False, compile_seconds=30.0))
        on_epoch_end(EpochMetrics(2, 2.0, 0.1, 1e-3, 0.0, seconds=1.5, checkpointed=False))
        raise ValueError("stop here")

    assert isinstance(Objective(spec, artifacts, trainer=compiles_then_fails)(study.ask()).error, ValueError)
    assert study.trials[0].user_attrs["epoch_seconds"] == [1.5, 1.5]
