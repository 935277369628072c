"""Opening a storage: the Optuna storage behind a URL (search/storage/urls.py), made for many workers, or a
one-line StudyError that shows no password.

SQLite: write-ahead log and a long busy timeout, for several local workers; the file and its folder
are made on demand, once (a lock), and never by a reader. A database server: pooled connections
tested before use, and calls that wait out a restart (search/storage/reconnect.py). grpc://: Optuna's
storage proxy. Workers get Optuna's heartbeat: a trial whose heartbeat went silent is failed
(fail_stale_trials) and re-queued (retry_callback).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from filelock import FileLock, Timeout
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from stl_tune.errors import StudyError
from stl_tune.search import optuna_compat as compat
from stl_tune.search.optuna_compat import experimental_ok
from stl_tune.search.settings import GRACE_ENV, GRACE_PERIOD_S, HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S
from stl_tune.search.storage.reconnect import ReconnectingRDBStorage
from stl_tune.search.storage.urls import error_line, mask_url, sqlite_file, storage_url

SQLITE_TIMEOUT_S = 60  # wait this long for another worker's write lock instead of failing
MAX_RETRY = 3  # re-runs of a trial whose worker died, as a new trial with the same params


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (dashboard, status) work while a worker writes; NORMAL sync is safe with WAL.
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def open_storage(
    url: str | None,
    *,
    heartbeat: bool = True,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    create: bool = True,
) -> BaseStorage:
    """The Optuna storage behind `url` (see storage_url), or a one-line StudyError.

    heartbeat: workers pass True so a trial whose process died is failed after `grace_period`
    seconds and re-queued as a new WAITING trial with the same params and user attrs
    (RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) names the original, whose
    checkpoint the objective resumes; see retry_callback). Readers (status, export, dashboard) pass False.
    heartbeat_interval, grace_period (seconds): default $STL_TUNE_HEARTBEAT_INTERVAL and
    $STL_TUNE_GRACE_PERIOD, else HEARTBEAT_INTERVAL_S and GRACE_PERIOD_S.
    create: False for readers, which must not leave an empty database (and its folders) behind
    where a SQLite URL names no file.
    """
    url = storage_url(url)  # checked: a URL that names no storage is refused there
    shown = mask_url(url)
    if url.startswith("grpc://"):
        return _grpc_storage(url, shown)
    if heartbeat and heartbeat_interval is None:
        heartbeat_interval = _env_seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S)
    if heartbeat and grace_period is None:
        grace_period = _env_seconds(GRACE_ENV, GRACE_PERIOD_S)
    try:  # (a StudyError raised in here passes the handlers below unchanged)
        u = sqlalchemy.make_url(url)
        db = sqlite_file(url)
        lock: Any = contextlib.nullcontext()
        if db is not None and not create and not db.is_file():
            raise StudyError(f"no study storage at {db}; start a search with `stl-tune run`")
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            # RDBStorage creates its tables and stamps their schema version check-then-write:
            # processes opening a new file at once collide ("table studies already exists").
            lock = FileLock(f"{db}.lock", timeout=SQLITE_TIMEOUT_S)
        if u.get_backend_name() == "sqlite":
            # SQLAlchemy's recipe for per-connection PRAGMAs: it sees every engine of the process
            # and acts on SQLite connections only.
            if not sqlalchemy.event.contains(sqlalchemy.Engine, "connect", _sqlite_wal):
                sqlalchemy.event.listen(sqlalchemy.Engine, "connect", _sqlite_wal)
            engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        else:  # a server: test pooled connections so a database restart does not kill workers
            engine_kwargs = {"pool_pre_ping": True}  # ... and wait out a restart (search/storage/reconnect.py)
        with lock, experimental_ok():  # heartbeats and their retry are "experimental"
            beat: dict[str, Any] = {}
            if heartbeat:
                beat = dict(
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=retry_callback(),
                )
            cls = RDBStorage if u.get_backend_name() == "sqlite" else ReconnectingRDBStorage
            return cls(url, engine_kwargs=engine_kwargs, **beat)
    except ImportError as e:  # Optuna re-raises the driver's ImportError with a generic text
        raise StudyError(f"storage {shown}: missing database driver ({e.__cause__ or e})") from None
    except Timeout:
        raise StudyError(f"storage {shown}: another process holds {db}.lock") from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, OSError, ValueError) as e:  # the URL was checked before
        raise StudyError(f"storage {shown}: cannot open it: {error_line(e, url)}") from None


def _env_seconds(name: str, default: int) -> int:
    value = os.environ.get(name, default)
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise StudyError(f"${name} must be a whole number of seconds, at least 1; got {value!r}")
    return seconds


def _grpc_storage(url: str, shown: str) -> BaseStorage:
    parts = urlsplit(url)
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise StudyError(f"storage {shown}: expected grpc://host:port")
    with experimental_ok():  # GrpcStorageProxy is marked experimental
        proxy = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=10)
    except ConnectionError:
        raise StudyError(f"storage {shown}: no Optuna gRPC server answers there") from None
    return proxy


def describe(storage: BaseStorage) -> str:
    """A printable, password-free name for an open storage."""
    url = compat.database_url(storage)
    if url:
        return mask_url(url)
    address = compat.grpc_address(storage)
    return f"grpc://{address[0]}:{address[1]}" if address else type(storage).__name__


# ------------------------------------------------------------------------------- stale trials
def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """What happens to a trial whose worker died or was interrupted: a new trial with the same
    params and user attrs, that resumes from the dead one's checkpoint. Its intermediate values
    are not inherited: the dead trial may have reported epochs past its last checkpoint, which the
    retry trains (and reports) again; the objective reports the epochs up to the checkpoint."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's retry callback, re-queue) the study's RUNNING trials whose
    heartbeat is older than the grace period."""
    with experimental_ok():
        optuna.storages.fail_stale_trials(study)
