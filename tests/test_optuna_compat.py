"""What stl-tune relies on in Optuna's internals (search/optuna_compat.py): when an Optuna upgrade
changes one of them, the test named after it fails here rather than a search in production."""

from __future__ import annotations

import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from stl_tune.search import open_storage
from stl_tune.search import optuna_compat as compat


@pytest.fixture
def study(storage_url) -> optuna.Study:
    return optuna.create_study(study_name="compat", storage=open_storage(storage_url, heartbeat=False))


def test_storage_of_and_trial_id_address_the_trial(study):
    trial = study.ask()
    storage = compat.storage_of(study)
    assert storage.get_trial_id_from_study_id_trial_number(study._study_id, trial.number) == compat.trial_id(trial)
    assert compat.trial_id(storage.get_trial(compat.trial_id(trial))) == compat.trial_id(trial)


def test_frozen_sees_a_change_made_through_another_handle(study, storage_url):
    trial = study.ask()
    other = open_storage(storage_url, heartbeat=False)
    other.set_trial_state_values(compat.trial_id(trial), TrialState.FAIL)
    assert compat.frozen(trial).state == TrialState.FAIL
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # what a stale worker then meets
        trial.set_user_attr("status", "late")


def test_heartbeat_keeps_a_trial_alive_and_its_absence_fails_it(storage_url):
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="beat", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "heartbeat is for Study.optimize" is silenced
        trial = compat.ask(study)
    with compat.heartbeat(study, trial):
        time.sleep(3)  # longer than the grace period, but beating
        with compat.experimental_ok():
            optuna.storages.fail_stale_trials(study)
        assert compat.frozen(trial).state == TrialState.RUNNING
    time.sleep(3)  # silent past the grace period
    with compat.experimental_ok():
        optuna.storages.fail_stale_trials(study)
    assert compat.frozen(trial).state == TrialState.FAIL


def test_retry_history_names_the_retried_trials(study):
    from stl_tune.search.storage.storages import retry_callback

    first = study.ask()
    assert compat.retry_history(compat.frozen(first)) == []
    compat.storage_of(study).set_trial_state_values(compat.trial_id(first), TrialState.FAIL)
    with compat.experimental_ok():
        retry_callback()(study, compat.frozen(first))
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert compat.retry_history(retry) == [first.number]


def test_storage_url_of_a_database_and_of_optunas_cache_around_it(storage_url):
    url = storage_url
    rdb = open_storage(url, heartbeat=False)
    assert compat.database_url(rdb) == url
    cached = compat.CachedStorage(rdb)  # what Optuna puts around an RDBStorage; the proxy extends it
    assert compat.database_url(cached) == url and compat.backend(cached) is rdb and compat.backend(rdb) is rdb
    study_id = cached.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "cached")
    assert rdb.get_study_id_from_name("cached") == study_id
    assert compat.grpc_address(rdb) is None


def test_grpc_address_of_a_proxy_client():
    pytest.importorskip("grpc")
    with compat.experimental_ok():
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=13999)  # connects lazily
    assert compat.grpc_address(client) == ("127.0.0.1", 13999)
    assert compat.database_url(client) is None


def test_experimental_ok_silences_only_experimental_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with compat.experimental_ok():
            warnings.warn("x", optuna.exceptions.ExperimentalWarning, stacklevel=2)
            warnings.warn("y", UserWarning, stacklevel=2)
    assert [str(w.message) for w in caught] == ["y"]


def test_study_id_and_the_trial_table_count_a_study(study):
    import sqlalchemy

    study.ask()
    study.tell(study.ask(), 0.5)
    storage = compat.storage_of(study)
    assert compat.study_id(study) == storage.get_study_id_from_name(study.study_name)
    t = compat.trial_model()
    query = (
        sqlalchemy.select(t.state, sqlalchemy.func.count())
        .where(t.study_id == compat.study_id(study))
        .group_by(t.state)
    )
    with compat.backend(storage).engine.connect() as conn:
        assert dict(conn.execute(query).all()) == {TrialState.RUNNING: 1, TrialState.COMPLETE: 1}


class _Recorder(optuna.samplers.RandomSampler):
    """A random sampler that records how many trials each suggestion was given to learn from."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[int] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.seen.append(len(study.get_trials(deepcopy=False)))
        return super().sample_independent(study, trial, param_name, param_distribution)


def _hyperband_run(pruner: optuna.pruners.BasePruner) -> tuple[list[int], list[bool]]:
    """12 trials with fixed curves (epochs 1..9): what the sampler saw, and which were pruned."""
    sampler = _Recorder()
    study = optuna.create_study(study_name="brackets", sampler=sampler, pruner=pruner, direction="maximize")
    pruned = []
    for n in range(12):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        for epoch in range(1, 10):
            trial.report((n * 7 % 12 + epoch) / 30, epoch)
            if trial.should_prune():
                break
        pruned.append(epoch < 9)
        study.tell(
            trial,
            None if pruned[-1] else (n * 7 % 12 + 9) / 30,
            state=TrialState.PRUNED if pruned[-1] else TrialState.COMPLETE,
        )
    return sampler.seen, pruned


def test_shared_hyperband_prunes_as_hyperband_and_its_sampler_sees_every_bracket():
    options = {"min_resource": 1, "max_resource": 9, "reduction_factor": 3}
    seen_own, pruned_own = _hyperband_run(optuna.pruners.HyperbandPruner(**options))
    seen_all, pruned_all = _hyperband_run(compat.SharedHyperband(**options))
    assert pruned_all == pruned_own and any(pruned_all)  # the same decisions
    assert seen_all == list(range(1, 13))  # every trial so far (the one being sampled included)
    assert seen_own[-1] < 12 and len(set(seen_own)) < 12  # Optuna's own: the new trial's bracket only


def test_parallel_coordinate_axes_then_draw_is_optunas_plot_and_draws_the_ticks_given(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    study = optuna.create_study(study_name="parallel", storage=f"sqlite:///{tmp_path}/s.db", direction="maximize")
    dists = {"width": IntDistribution(4, 7), "lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for i in range(4):
        study.add_trial(
            create_trial(value=0.1 * i, params={"width": 4 + i, "lr": 10.0 ** -(i + 1)}, distributions=dists)
        )
    axes = compat.parallel_coordinate_axes(study, target_name="acc")
    assert [d.label for d in axes.dims_params] == ["lr", "width"]  # sorted
    assert axes.dims_params[0].is_log and axes.dims_params[0].values == (-1.0, -2.0, -3.0, -4.0)  # log10
    assert axes.dims_objectives[0].values == tuple(0.1 * i for i in range(4)) and not axes.reverse_scale
    fig, ax = compat.draw_parallel_coordinate(axes)
    with compat.experimental_ok():
        assert (
            fig.to_plotly_json()
            == optuna.visualization.plot_parallel_coordinate(study, target_name="acc").to_plotly_json()
        )
    lines = [t for t in fig.data if t.customdata is not None]  # one per trial, in draw_order
    assert [t.y[0] for t in lines] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])  # first point: the objective in [0, 1]
    assert [t for t in fig.data if t.customdata is None][-1].marker.colorscale is not None  # the colour bar
    assert isinstance(ax.collections[0], LineCollection)  # every trial's line
    twins = [a for a in ax.figure.axes if a is not ax and a.get_shared_x_axes().joined(a, ax)]
    assert len(twins) == 2  # an axis per parameter, in order
    plt.close("all")

    width = axes.dims_params[1]._replace(tickvals=[4, 7], ticktext=["four", "seven"])
    fig, _ = compat.draw_parallel_coordinate(
        axes._replace(dims_params=[axes.dims_params[0], width], draw_order=(3, 2, 1, 0))
    )
    assert [a.text for a in fig.layout.annotations if a.x == 2] == ["four", "seven"]
    assert [t.y[0] for t in fig.data if t.customdata is not None] == pytest.approx(
        [1.0, 2 / 3, 1 / 3, 0.0]
    )  # drawn in that order
    plt.close("all")
