"""Serving a storage: `stl-tune dashboard` (optuna-dashboard, localhost by default) and `stl-tune proxy`
(Optuna's gRPC proxy, with the heartbeat that gRPC cannot carry)."""

from __future__ import annotations

from typing import Annotated

import typer

from stl_tune.cli.options import StorageOpt
from stl_tune.errors import UserError
from stl_tune.search.settings import GRACE_ENV, GRACE_PERIOD_S

app = typer.Typer(no_args_is_help=True)


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind. 0.0.0.0 exposes the study (and its delete buttons) "
            "to the network, without authentication."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8080,
) -> None:
    """Serve optuna-dashboard (live plots of every study) on the same storage."""
    import socket

    import optuna_dashboard

    from stl_tune.search import describe, open_storage

    store = open_storage(storage, heartbeat=False, create=False)
    url = f"http://{host}:{port}/dashboard"
    typer.echo(f"optuna-dashboard on {url} for {describe(store)} (Ctrl-C stops it)")
    try:
        optuna_dashboard.run_server(store, host=host, port=port)
    except socket.gaierror as e:  # before OSError: it is a subclass
        raise UserError(f"--host {host}: {e.strerror}") from None
    except OSError:  # binding failed: the port is taken, or privileged (below 1024)
        raise UserError(f"port {port} on {host} is in use (or not allowed); pass --port") from None


@app.command()
def proxy(
    storage: StorageOpt = None,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on: a private network only, since gRPC here has no authentication or encryption."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 13000,
    grace_period: Annotated[
        int,
        typer.Option(
            min=3,
            envvar=GRACE_ENV,
            help="Seconds without a write after which a RUNNING trial counts as dead: longer than the slowest epoch.",
        ),
    ] = GRACE_PERIOD_S,
) -> None:
    """Serve the database to any number of workers over gRPC (--storage grpc://HOST:PORT), with few connections."""
    import threading
    import warnings

    import optuna

    from stl_tune.search import describe, mask_url, open_storage, storage_url
    from stl_tune.search.storage.proxy import HeartbeatOnWrite, fail_stale_trials_forever

    url = storage_url(storage)
    if url.startswith("grpc://"):  # before opening it, which would wait for that server first
        raise UserError(f"proxy: {mask_url(url)} is a proxy itself; pass the database URL it should serve")
    # This process only serves, from gRPC and stale-check threads where a scoped experimental_ok()
    # would not reach: Optuna marks the proxy, heartbeats and fail_stale_trials experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines: "Server started", "Listening..."
    interval = max(1, grace_period // 3)  # check three times per grace period
    backend = open_storage(url, heartbeat=True, heartbeat_interval=interval, grace_period=grace_period)
    served = HeartbeatOnWrite(backend)
    threading.Thread(target=fail_stale_trials_forever, args=(served, url, interval), daemon=True).start()
    typer.echo(f"serving {describe(backend)} on {host}:{port}; workers: --storage grpc://{host}:{port}")
    try:
        optuna.storages.run_grpc_proxy_server(served, host=host, port=port)
    except KeyboardInterrupt:
        typer.echo("proxy stopped")
