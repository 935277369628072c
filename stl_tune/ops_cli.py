"""Operations commands: `stl-tune report` (a study as a static page) and `stl-tune proxy` (gRPC)."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path
from typing import Annotated

import optuna
import typer

from stl_tune.search.options import NameOpt, StorageOpt
from stl_tune.search.study import GRACE_PERIOD_S

app = typer.Typer(no_args_is_help=True)

@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.html, the PNG plots and configs/.")],
    name: NameOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Write a study's report: a self-contained HTML page (opens from disk), PNG plots, best configs."""
    from stl_tune.report import write_report
    from stl_tune.search.study import describe, open_storage, resolve_study_name

    store = open_storage(storage, heartbeat=False)
    study = optuna.load_study(study_name=resolve_study_name(name, store), storage=store)
    page = write_report(study, out, storage=describe(store))
    typer.echo(f"wrote {page}")


# ------------------------------------------------------------------------------------- proxy
class _HeartbeatOnWrite(optuna.storages._CachedStorage):
    """The database storage behind the proxy, taking every write for a trial as its heartbeat.

    Optuna's gRPC API has no heartbeat call (GrpcStorageProxy is no BaseHeartbeat, optuna 5.0), and
    fail_stale_trials skips RUNNING trials without a heartbeat row, so a trial whose worker died
    behind a plain proxy stays RUNNING forever. Here each trial write a worker sends (start, params,
    per-epoch values, attrs) records a heartbeat, and `proxy` fails silent trials itself. A trial is
    therefore judged alive while it writes at least once per grace period. _CachedStorage is what
    Optuna itself wraps around an RDBStorage (optuna.storages.get_storage) for the proxy.
    """

    def create_new_trial(self, study_id, template_trial=None):
        trial_id = super().create_new_trial(study_id, template_trial)
        self.record_heartbeat(trial_id)
        return trial_id

    def set_trial_state_values(self, trial_id, state, values=None):
        changed = super().set_trial_state_values(trial_id, state, values)
        if state == optuna.trial.TrialState.RUNNING:  # a WAITING (retried) trial starts its clock
            self.record_heartbeat(trial_id)
        return changed

    def set_trial_param(self, trial_id, param_name, param_value_internal, distribution):
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self.record_heartbeat(trial_id)

    def set_trial_intermediate_value(self, trial_id, step, intermediate_value):
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self.record_heartbeat(trial_id)

    def set_trial_user_attr(self, trial_id, key, value):
        super().set_trial_user_attr(trial_id, key, value)
        self.record_heartbeat(trial_id)

    def set_trial_system_attr(self, trial_id, key, value):
        super().set_trial_system_attr(trial_id, key, value)
        self.record_heartbeat(trial_id)


def _fail_stale_trials_forever(storage: optuna.storages.BaseStorage, every_s: float) -> None:
    """What a direct-database worker does before each trial, done here for the workers behind us."""
    while True:
        time.sleep(every_s)
        try:
            for frozen in storage.get_all_studies():
                optuna.storages.fail_stale_trials(optuna.load_study(study_name=frozen.study_name, storage=storage))
        except Exception as e:  # a database hiccup must not end the checks; the next round retries
            typer.echo(f"stale-trial check failed: {type(e).__name__}: {str(e).splitlines()[0]}", err=True)


@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on: a private network only, since gRPC here has "
                                      "no authentication or encryption.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
    grace_period: Annotated[int, typer.Option(min=3, help="Seconds without a write after which a RUNNING trial "
                                              "counts as dead: longer than the slowest epoch.")] = GRACE_PERIOD_S,
) -> None:
    """Serve the database to any number of workers over gRPC (--storage grpc://HOST:PORT), with few connections."""
    from stl_tune.errors import UserError
    from stl_tune.search.study import describe, open_storage

    # This process only serves; Optuna marks the proxy, heartbeats and fail_stale_trials experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    interval = max(1, grace_period // 3)  # check three times per grace period
    backend = open_storage(storage, heartbeat=True, heartbeat_interval=interval, grace_period=grace_period)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise UserError(f"proxy: {describe(backend)} is not a database URL (a proxy cannot serve a proxy)")
    served = _HeartbeatOnWrite(backend)
    threading.Thread(target=_fail_stale_trials_forever, args=(served, interval), daemon=True).start()
    typer.echo(f"serving {describe(backend)} on {host}:{port}; workers: --storage grpc://{host}:{port}")
    try:
        optuna.storages.run_grpc_proxy_server(served, host=host, port=port)
    except KeyboardInterrupt:
        typer.echo("proxy stopped")
