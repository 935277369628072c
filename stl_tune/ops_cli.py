"""Operations commands: `stl-tune report` (a study as a static page) and `stl-tune proxy` (gRPC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stl_tune.errors import UserError
from stl_tune.search.options import GRACE_ENV, GRACE_PERIOD_S, NameOpt, StorageOpt

app = typer.Typer(no_args_is_help=True)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.html, the PNG plots and configs/.")],
    name: NameOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Write a study's report: a self-contained HTML page (opens from disk), PNG plots, best configs."""
    import optuna

    from stl_tune.report import write_report
    from stl_tune.search.study import describe, open_storage, resolve_study_name

    store = open_storage(storage, heartbeat=False, create=False)
    study = optuna.load_study(study_name=resolve_study_name(name, store), storage=store)
    try:
        page = write_report(study, out, storage=describe(store))
    except OSError as e:  # the folder cannot be made or written (a read-only place, a file in the way)
        raise UserError(f"cannot write the report to {out}: {e.strerror or e}") from None
    typer.echo(f"wrote {page}")


# ------------------------------------------------------------------------------------- proxy
@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on: a private network only, since gRPC here has "
                                      "no authentication or encryption.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
    grace_period: Annotated[int, typer.Option(min=3, envvar=GRACE_ENV, help="Seconds without a write after "
                                              "which a RUNNING trial counts as dead: longer than the slowest "
                                              "epoch.")] = GRACE_PERIOD_S,
) -> None:
    """Serve the database to any number of workers over gRPC (--storage grpc://HOST:PORT), with few connections."""
    import threading
    import warnings

    import optuna

    from stl_tune.search.proxy import HeartbeatOnWrite, fail_stale_trials_forever
    from stl_tune.search.study import describe, open_storage, storage_url

    # This process only serves, from gRPC and stale-check threads where a scoped experimental_ok()
    # would not reach: Optuna marks the proxy, heartbeats and fail_stale_trials experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    interval = max(1, grace_period // 3)  # check three times per grace period
    url = storage_url(storage)
    backend = open_storage(url, heartbeat=True, heartbeat_interval=interval, grace_period=grace_period)
    if not isinstance(backend, optuna.storages.RDBStorage):
        raise UserError(f"proxy: {describe(backend)} is not a database URL (a proxy cannot serve a proxy)")
    served = HeartbeatOnWrite(backend)
    threading.Thread(target=fail_stale_trials_forever, args=(served, url, interval), daemon=True).start()
    typer.echo(f"serving {describe(backend)} on {host}:{port}; workers: --storage grpc://{host}:{port}")
    try:
        optuna.storages.run_grpc_proxy_server(served, host=host, port=port)
    except KeyboardInterrupt:
        typer.echo("proxy stopped")
