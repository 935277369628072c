"""The sampler and the pruner of a study, built from its spec's plug-in options (the registries of
the names a study file may use are in search/spec/space.py, which checks them)."""

from __future__ import annotations

from typing import Any

import optuna

from stl_tune.errors import StudyError
from stl_tune.search.optuna_compat import experimental_ok
from stl_tune.search.spec.space import PRUNERS, SAMPLERS, StudySpec


def make_sampler(spec: StudySpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler. Worker k draws from seed + k: equal seeds would make parallel workers
    propose the same random start-up trials."""
    options = {k: v for k, v in spec.sampler.items() if k != "name"}
    if options.get("seed") is not None:
        options["seed"] += worker
    return _build("sampler", SAMPLERS[spec.sampler["name"]], options)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; the objective reports once per epoch, so resources are epochs."""
    options = {k: v for k, v in spec.pruner.items() if k != "name"}
    return _build("pruner", PRUNERS[spec.pruner["name"]], options)


def _build(what: str, cls: type, options: dict[str, Any]) -> Any:
    with experimental_ok():  # TPE's `group` is marked experimental; it is what we want
        try:
            return cls(**options)
        except (TypeError, ValueError) as e:
            raise StudyError(f"{what} {cls.__name__}: bad option: {e}") from None
