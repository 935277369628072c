"""Studies: created exactly once, with their study file's spec stored in them, and loaded again
with it (workers joining, status, export). Storages are search/storage/storages.py, samplers and pruners
search/spec/plugins.py.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage

from stl_tune.errors import StudyError
from stl_tune.search.optuna_compat import experimental_ok
from stl_tune.search.record import SPEC_ATTR
from stl_tune.search.spec.plugins import make_pruner, make_sampler
from stl_tune.search.spec.space import StudySpec
from stl_tune.search.storage.storages import describe, open_storage

CONFIRM_SUFFIX = ".confirm"  # NAME.confirm: the study of `stl-tune confirm` for search NAME


def create_or_load_study(
    spec: StudySpec, name: str | None, storage: BaseStorage | str | None, *, worker: int = 0
) -> optuna.Study:
    """The study `name` (default spec.name), created with `spec` stored in its user attrs if new.

    Run this once before workers start. A second run with the same spec continues the study; a
    different spec under the same name is refused, since mixing search spaces misleads the sampler.
    data.dir alone may differ: it says where a host keeps the data (--data-dir sets it per host), and
    the stored spec takes the new one, the folder that this run's workers train on.
    A new study names its objective (spec.objective, e.g. val_acc) through Optuna's
    set_metric_names, which optuna-dashboard shows instead of "Objective 0".
    """
    storage = _open(storage)
    name = name or spec.name
    study = optuna.create_study(  # load_if_exists catches the creation race between processes
        study_name=name,
        storage=storage,
        sampler=make_sampler(spec, worker),
        pruner=make_pruner(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    want = spec.to_dict()
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        if study.direction.name.lower() != spec.direction:
            raise StudyError(f"study '{name}' exists with direction {study.direction.name.lower()}")
        study.set_user_attr(SPEC_ATTR, want)
        with experimental_ok():  # set_metric_names is "experimental" (since Optuna 3.2; still in 5.0)
            study.set_metric_names([spec.objective])
    elif _placed(stored) == _placed(want):
        if stored != want:
            study.set_user_attr(SPEC_ATTR, want)
    else:
        diff = [k for k in want if _placed(stored).get(k) != _placed(want)[k]]
        raise StudyError(
            f"study '{name}' already exists with a different {', '.join(diff)}; "
            "pass --name for a new study or run its original study file"
        )
    return study


def resolve_study_name(name: str | None, storage: BaseStorage) -> str:
    """`name` if the storage has it, or the only search there (a search's NAME.confirm study, made
    by `stl-tune confirm`, goes with it); else a StudyError listing them."""
    names = optuna.get_all_study_names(storage)
    if name is not None and name in names:
        return name
    listing = f"studies there: {', '.join(names)}" if names else "it has no studies yet"
    if name is not None:
        raise StudyError(f"no study '{name}' in {describe(storage)}; {listing}")
    searches = [n for n in names if not n.endswith(CONFIRM_SUFFIX)]
    if len(searches) != 1:
        raise StudyError(f"pass --name: {describe(storage)} holds {len(names)} studies; {listing}")
    return searches[0]


def load_study(
    name: str | None, storage: BaseStorage | str | None, *, worker: int = 0
) -> tuple[optuna.Study, StudySpec]:
    """An existing study and the spec it was created with (workers joining it, status, export).
    name None: the only study in the storage."""
    storage = _open(storage)
    name = resolve_study_name(name, storage)
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    if SPEC_ATTR not in attrs:
        raise StudyError(f"study '{name}' has no stl-tune spec (was it created by stl-tune run?)")
    spec = StudySpec.from_dict(attrs[SPEC_ATTR], source=f"study '{name}'")
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=make_sampler(spec, worker), pruner=make_pruner(spec)
    )
    return study, spec


def _placed(spec: dict) -> dict:
    """A stored spec less data.dir: where the data is on one host, not what the study is."""
    return {**spec, "fixed": {k: v for k, v in spec.get("fixed", {}).items() if k != "data.dir"}}


def _open(storage: BaseStorage | str | None) -> BaseStorage:
    return storage if isinstance(storage, BaseStorage) else open_storage(storage)
