"""The search service: an Optuna study over the trainer's config, run by worker processes that share
one SQL storage.

What readers of a study use (`stl-tune status`, `export`, `report`, `dashboard`, `proxy`, the
report, benchmarks) is exported here: `from stl_tune.search import load_study, tally, record`.
Each name is imported from its module on first use (PEP 562), so importing this package (the
command line does, for search/settings.py) costs nothing. The modules, by job:

    settings      defaults and environment variables the command line shows
    record        a trial's record: user-attribute names, status and fail-reason values, readers
    space         study files: the spec, its validation, the plug-in names; suggest_config
    datacheck     the data against a study, before any trial
    urls          storage URLs, masked for printing
    storages      opening a storage (SQLite, PostgreSQL, gRPC) for many workers
    reconnect     the storage for a database server, which waits out a lost server
    plugins       a study's sampler and pruner
    study         creating a study once, loading it with its spec
    trials        study state: counts, the best trial, the budget's claim check
    outcome       how a trial ended, as one value, and the one function that settles it
    budget        the time budget and the patience
    warmstart     the known recipe, --enqueue, --from-study
    objective     the one bridge between Optuna and the trainer
    checkpoints   the artifact store of resume checkpoints
    workers       the worker loop
    launch        worker processes on one host
    live          the live view and the workers' log lines
    session       what run, worker and confirm do below the command line
    eta           the time a study has left
    probe         what one trial costs on this host's CPU
    fmt           how numbers read in the output
    confirm       `stl-tune confirm`: the best trials re-trained with new seeds
    export        a trial's config, set up for final training
    proxy         the heartbeat that `stl-tune proxy` adds for workers behind it
    optuna_compat the one door to Optuna's internals
"""

import importlib

_EXPORTS = {  # name: the module that defines it
    "StudyError": "space",
    "StudySpec": "space",
    "load_study_file": "space",
    "open_storage": "storages",
    "describe": "storages",
    "mask_url": "urls",
    "storage_url": "urls",
    "storage_arg": "urls",
    "create_or_load_study": "study",
    "load_study": "study",
    "resolve_study_name": "study",
    "Tally": "trials",
    "tally": "trials",
    "ranked": "trials",
    "deadline": "budget",
    "time_left": "budget",
    "trials_since_best": "budget",
    "best_confirmed": "confirm",
    "confirmed_ranking": "confirm",
    "left_or_stopped": "live",
    "duration": "fmt",
    "write_export": "export",
    "experimental_ok": "optuna_compat",
    "retry_history": "optuna_compat",
    "parallel_coordinate_axes": "optuna_compat",
    "draw_parallel_coordinate": "optuna_compat",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:  # PEP 562: a lazy module attribute
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
