"""The one door to Optuna internals: every private attribute or module stl-tune relies on.

Optuna keeps no public API for these, so each is used here only, pinned by the version range in
pyproject.toml (one minor version today) and by tests/test_optuna_compat.py, which checks the
behaviour relied upon; .ci/run runs it on the newest Optuna the range allows and, where the range
spans more than one version, again on the lowest. When Optuna changes one of them, that test names
it, and this file is the only one to mend.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import optuna
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial


@contextlib.contextmanager
def experimental_ok() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning inside: heartbeats and their retry callback, the gRPC
    proxy, fail_stale_trials, TPE's `group` and the matplotlib plots are all marked experimental
    (some since Optuna 2.x), and are what stl-tune needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


# The storage that Optuna itself wraps around an RDBStorage (optuna.storages.get_storage): a trial
# cache for the process. stl-tune's gRPC proxy subclasses it to add heartbeats (search/storage/proxy.py).
CachedStorage = _CachedStorage


def trial_model() -> type:
    """The ORM class of Optuna's trial table, which storage/reconnect.py counts. Imported here on first use:
    it pulls in SQLAlchemy, which reading a study file does without."""
    from optuna.storages._rdb.models import TrialModel

    return TrialModel


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study (Study keeps it private)."""
    return study._study_id


def backend(storage: BaseStorage) -> BaseStorage:
    """The database storage inside the trial cache Optuna wraps around it; any other storage itself."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (Study keeps it private)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial: unlike its number, what every storage call takes."""
    return trial._trial_id


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A running trial as the storage has it now (its state may have been changed by another worker)."""
    return trial.storage.get_trial(trial._trial_id)


def ask(study: optuna.Study) -> optuna.Trial:
    """study.ask() for a loop that runs the trial's heartbeat itself (heartbeat() below): Optuna
    warns that heartbeats are meant for Study.optimize, which keeps that thread to itself."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat in a thread while inside, as Study.optimize does for its trials
    (a no-op on a storage without heartbeats)."""
    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the trials a retried trial re-runs, oldest first; [] for a first attempt.
    RetryHeartbeatStaleTrialCallback writes them into the trial's system attrs."""
    with experimental_ok():
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial) or [])


def database_url(storage: BaseStorage) -> str | None:
    """The database URL behind an RDBStorage or the cache Optuna wraps around one; None otherwise."""
    return getattr(backend(storage), "url", None)


def grpc_address(storage: BaseStorage) -> tuple[str, int] | None:
    """(host, port) of a gRPC proxy client; None for any other storage."""
    host, port = getattr(storage, "_host", None), getattr(storage, "_port", None)
    return (host, port) if host is not None and port is not None else None


class SharedHyperband(optuna.pruners.BasePruner):
    """Hyperband's pruning decisions, with the sampler learning from every trial.

    Optuna hands the sampler of a study whose pruner is a HyperbandPruner only the trials of the
    new trial's bracket (optuna.pruners._filter_study checks `isinstance(study.pruner,
    HyperbandPruner)`), so TPE spends its random start-up trials once per bracket and models each
    bracket apart. This pruner delegates every decision to a HyperbandPruner (which still compares
    a trial only with its own bracket) but is not one, so the sampler sees the whole study.
    Same options as optuna.pruners.HyperbandPruner.
    """

    def __init__(
        self,
        min_resource: int = 1,
        max_resource: str | int = "auto",
        reduction_factor: int = 3,
        bootstrap_count: int = 0,
    ) -> None:
        self.hyperband = optuna.pruners.HyperbandPruner(min_resource, max_resource, reduction_factor, bootstrap_count)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.hyperband.prune(study, trial)


def parallel_coordinate_axes(study: optuna.Study, target_name: str):
    """The axes of Optuna's parallel-coordinates plot before it is drawn, so the report can re-tick
    them (Optuna spaces five ticks evenly on a numeric axis): a NamedTuple with dims_objectives and
    dims_params (in sorted parameter order), each a NamedTuple of .label, .values (log10 on a log
    axis, category indices), .range, .is_log, .is_cat, .tickvals, .ticktext and .has_missing (a
    "None" tick first, for trials without a conditional parameter); and .color_values, .draw_order
    and .reverse_scale."""
    from optuna.visualization._parallel_coordinate import _get_parallel_coordinate_info

    return _get_parallel_coordinate_info(study, target_name=target_name)


def draw_parallel_coordinate(axes):
    """(plotly figure, matplotlib Axes) of parallel_coordinate_axes' result, drawn as
    optuna.visualization's and optuna.visualization.matplotlib's plot_parallel_coordinate draw them."""
    from optuna.visualization._parallel_coordinate import _get_parallel_coordinate_plot
    from optuna.visualization.matplotlib._parallel_coordinate import _get_parallel_coordinate_plot as draw_png

    return _get_parallel_coordinate_plot(axes), draw_png(axes)
