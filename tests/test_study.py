"""Creating studies once and loading them with their spec, on both storages (the storage_url
fixture), also from several processes at once; their samplers and pruners."""

import multiprocessing
import re

import optuna
import pytest

from stl_tune.errors import StudyError
from stl_tune.search.optuna_compat import SharedHyperband
from stl_tune.search.spec import plugins
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.state import study as S
from stl_tune.search.storage import storages
from stl_tune.search.storage.urls import mask_url


def make_spec(**changes) -> StudySpec:
    d = {
        "name": "t",
        "search_space": {"model.width": {"type": "int", "low": 4, "high": 8}},
        "fixed": {"optim.epochs": 3},
        **changes,
    }
    return StudySpec.from_dict(d)


def test_create_or_load_study_is_idempotent_and_stores_spec(storage_url):
    url, spec = storage_url, make_spec()
    first = S.create_or_load_study(spec, None, url)
    again = S.create_or_load_study(spec, None, storages.open_storage(url))
    assert first.study_name == again.study_name == "t" and first._study_id == again._study_id
    assert first.user_attrs["spec"] == spec.to_dict()
    assert first.metric_names == again.metric_names == ["best_val_acc"]  # spec.objective, as the dashboard shows it
    other = S.create_or_load_study(spec, "renamed", url)
    assert other.study_name == "renamed"
    assert optuna.get_all_study_names(storages.open_storage(url)) == ["t", "renamed"]
    with pytest.raises(StudyError, match="different search_space"):
        changed = make_spec(search_space={"model.width": {"type": "int", "low": 4, "high": 16}})
        S.create_or_load_study(changed, None, url)


def test_load_study_round_trips_spec(storage_url):
    url, spec = storage_url, make_spec(pruner={"name": "hyperband", "min_resource": 1})
    S.create_or_load_study(spec, None, url)
    study, loaded = S.load_study("t", url)
    assert loaded == spec and study.study_name == "t"
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert S.load_study(None, url)[1] == spec  # the only study
    with pytest.raises(StudyError, match=re.escape(f"no study 'nope' in {mask_url(url)}; studies there: t")):
        S.load_study("nope", url)
    optuna.create_study(storage=storages.open_storage(url), study_name="foreign")
    with pytest.raises(StudyError, match="no stl-tune spec"):
        S.load_study("foreign", url)
    with pytest.raises(StudyError, match="pass --name"):
        S.load_study(None, url)


@pytest.mark.parametrize(
    "sampler,cls",
    [({"name": "tpe"}, optuna.samplers.TPESampler), ({"name": "random"}, optuna.samplers.RandomSampler)],
)
@pytest.mark.parametrize(
    "pruner,pcls",
    [
        ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"name": "hyperband_shared"}, SharedHyperband),
        ({"name": "median"}, optuna.pruners.MedianPruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_sampler_and_pruner_choices(sampler, cls, pruner, pcls):
    spec = make_spec(sampler=sampler, pruner=pruner)
    assert type(plugins.make_sampler(spec)) is cls
    assert type(plugins.make_pruner(spec)) is pcls


def test_workers_draw_different_seeded_streams():
    spec = make_spec(sampler={"name": "random", "seed": 3})

    def first_widths(worker):
        study = optuna.create_study(sampler=plugins.make_sampler(spec, worker))
        return [study.ask().suggest_int("w", 0, 10**9) for _ in range(3)]

    assert first_widths(0) == first_widths(0)  # reproducible per worker
    assert first_widths(0) != first_widths(1)  # but workers do not repeat each other


def test_bad_sampler_option_value_is_a_study_error():
    spec = make_spec(sampler={"name": "tpe", "multivariate": False, "group": True})
    with pytest.raises(StudyError, match="sampler TPESampler: bad option"):
        plugins.make_sampler(spec)


def _create_and_add_trial(url: str, barrier) -> None:
    barrier.wait()  # all processes race for the creation at once
    study = S.create_or_load_study(make_spec(), None, url)
    study.add_trial(optuna.create_trial(value=1.0, params={}, distributions={}))


@pytest.mark.slow
def test_several_processes_create_the_study_once(storage_url):
    url = storage_url
    if url.startswith("postgresql"):
        # Optuna makes its tables on a storage's first open, unguarded on a server: processes that
        # open an empty database at once can collide there (SQLite's file lock keeps them apart).
        storages.open_storage(url, heartbeat=False)
    ctx = multiprocessing.get_context("fork")  # no re-import: the race is the same
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_create_and_add_trial, args=(url, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    storage = storages.open_storage(url, heartbeat=False)
    assert optuna.get_all_study_names(storage) == ["t"]
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3


def test_data_dir_alone_may_differ_and_the_stored_spec_takes_it(storage_url):
    url, spec = storage_url, make_spec(fixed={"optim.epochs": 3, "data.dir": "/host-a/stl10"})
    S.create_or_load_study(spec, None, url)
    moved = make_spec(fixed={"optim.epochs": 3, "data.dir": "/host-b/stl10"})
    assert S.create_or_load_study(moved, None, url).user_attrs["spec"] == moved.to_dict()
    assert S.load_study("t", url)[1] == moved
    with pytest.raises(StudyError, match="different fixed"):
        S.create_or_load_study(make_spec(fixed={"optim.epochs": 4, "data.dir": "/host-b/stl10"}), None, url)


def test_run_records_the_data_dir_it_was_given(tmp_path, tiny_study, fake_data, monkeypatch):
    """Outside Optuna clients read the study's spec: its data.dir is the --data-dir the trials
    train on, not the study file's."""
    import yaml
    from typer.testing import CliRunner

    from stl_tune.cli import app
    from stl_tune.search.worker import session

    launched = []
    monkeypatch.setattr(session, "_launch", lambda *args, **kwargs: launched.append(args) or 0)
    tiny_study["fixed"]["data"]["dir"] = str(tmp_path / "not-here")
    study_file, url = tmp_path / "tiny.yaml", f"sqlite:///{tmp_path}/s.db"
    study_file.write_text(yaml.safe_dump(tiny_study))
    args = ["run", "--study", str(study_file), "--storage", url, "--trials", "1", "--gpus", "none"]
    r = CliRunner().invoke(app, [*args, "--data-dir", str(fake_data)])
    assert r.exit_code == 0 and len(launched) == 1, r.output
    study, spec = S.load_study("tiny", url)
    assert study.user_attrs["spec"]["fixed"]["data.dir"] == spec.fixed["data.dir"] == str(fake_data)
