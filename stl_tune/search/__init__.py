"""The search service: an Optuna study over the trainer's config, run by worker processes that share
one SQL storage.

What readers of a study use (`stl-tune status`, `export`, `report`, `dashboard`, `proxy`, the
report, benchmarks) is exported here: `from stl_tune.search import load_study, tally, record`.
Each name is imported from its module on first use (PEP 562), so importing this package (the
command line does, for search/settings.py) costs nothing.

The modules are in layers, lowest first; a module imports from its own layer and the ones below,
never from one above (tests/test_structure.py), so that reading a study file, say, imports no
database code:

    settings      defaults and environment variables the command line shows
    record        a trial's record: the user-attribute names and their readers
    optuna_compat the one door to Optuna's internals
    fmt           how numbers, durations and parameters read in the output
    storage/      where a study lives: URLs, storages, a server's reconnects, the gRPC proxy
    spec/         what a study searches: the study file, plug-ins, the data check, warm starts
    state/        what a study holds: the study, its trials, outcomes, limits, confirmation, export
    views/        how a study is shown: the live view, the time left
    worker/       what runs trials: the objective, what trials keep for an ensemble, the worker loop,
                  launching, the commands' steps
"""

import importlib

_EXPORTS = {  # name: the module that defines it, a module of this package unless named in full
    "StudyError": "stl_tune.errors",
    "StudySpec": "spec.space",
    "load_study_file": "spec.space",
    "open_storage": "storage.storages",
    "describe": "storage.storages",
    "mask_url": "storage.urls",
    "storage_url": "storage.urls",
    "storage_arg": "storage.urls",
    "create_or_load_study": "state.study",
    "load_study": "state.study",
    "resolve_study_name": "state.study",
    "Tally": "state.trials",
    "tally": "state.trials",
    "ranked": "state.trials",
    "deadline": "state.limits",
    "time_left": "state.limits",
    "trials_since_best": "state.limits",
    "best_confirmed": "state.confirm",
    "confirmed_ranking": "state.confirm",
    "left_or_stopped": "views.eta",
    "duration": "fmt",
    "best_line": "fmt",
    "write_export": "state.export",
    "experimental_ok": "optuna_compat",
    "retry_history": "optuna_compat",
    "parallel_coordinate_axes": "optuna_compat",
    "draw_parallel_coordinate": "optuna_compat",
}
__all__ = sorted(_EXPORTS)


def module_of(name: str) -> str:
    """The full name of the module that defines the export `name`."""
    module = _EXPORTS[name]
    return module if module.startswith("stl_tune.") else f"{__name__}.{module}"


def __getattr__(name: str):
    if name in _EXPORTS:  # PEP 562: a lazy module attribute
        return getattr(importlib.import_module(module_of(name)), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
