"""Where studies live (storage URLs), how they sample and prune, and creating them exactly once.

Storage URLs:
    sqlite:///storage/stl-tune.db        default; one machine, several worker processes
    postgresql://user:pass@host/db       several machines (psycopg 3: postgresql+psycopg://...)
    grpc://host:port                     `stl-tune proxy` in front of a database: few connections for
                                         many workers; Optuna has no heartbeat through it, so the proxy
                                         fails dead workers' trials itself (docs/SCALING.md)
Passwords never reach the terminal or a log: everything printed goes through mask_url.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import sqlalchemy
from filelock import FileLock, Timeout
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from stl_tune.search import optuna_compat as compat
from stl_tune.search.optuna_compat import experimental_ok
from stl_tune.search.options import (
    DEFAULT_STORAGE,
    GRACE_ENV,
    GRACE_PERIOD_S,
    HEARTBEAT_ENV,
    HEARTBEAT_INTERVAL_S,
    STORAGE_ENV,
)
from stl_tune.search.reconnect import ReconnectingRDBStorage
from stl_tune.search.space import PRUNERS, SAMPLERS, StudyError, StudySpec

SQLITE_TIMEOUT_S = 60  # wait this long for another worker's write lock instead of failing
MAX_RETRY = 3  # re-runs of a trial whose worker died, as a new trial with the same params
SPEC_ATTR = "spec"  # study user attr holding StudySpec.to_dict()
CONFIRM_SUFFIX = ".confirm"  # NAME.confirm: the study of `stl-tune confirm` for search NAME
CONFIG_ATTR = "config"  # trial user attr: config.to_dict of the trial's resolved TrainConfig


# ------------------------------------------------------------------------------------ URLs
def storage_url(url: str | None) -> str:
    """--storage, else $STL_TUNE_STORAGE, else the default SQLite file."""
    return url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


_USERINFO = re.compile(r"^(?P<head>[^:/?#]+://[^:/@?#]*:)(?P<pw>.*)@(?P<tail>[^@]*)$")
_QUERY_PW = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def mask_url(url: str) -> str:
    """`url` with any password replaced by *** (user:pw@ and ?password=); works on broken URLs too."""
    m = _USERINFO.match(url)
    if m and m["pw"]:
        url = f"{m['head']}***@{m['tail']}"
    return _QUERY_PW.sub(r"\1***", url)


def storage_arg(storage: str | None) -> str:
    """' --storage URL' (password masked) for a command line to copy, when --storage was given."""
    return f" --storage {mask_url(storage)}" if storage else ""


def _scrub(text: str, url: str) -> str:
    """`text` (a driver's message) with the URL's password removed, raw or percent-decoded."""
    try:
        secret = sqlalchemy.make_url(url).password
    except Exception:  # an unparsable URL: mask_url below still covers its user:pw@ form
        secret = None
    m = _USERINFO.match(url)
    for s in filter(None, [secret, m["pw"] if m else None]):
        text = text.replace(str(s), "***")
    return text.replace(url, mask_url(url))


def error_line(e: BaseException, url: str) -> str:
    """The first line of a storage error (the driver's own when SQLAlchemy wraps one), password-free."""
    lines = str(getattr(e, "orig", None) or e).strip().splitlines()
    return _scrub(lines[0] if lines else type(e).__name__, url)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database, a server or grpc://."""
    if url.startswith("grpc://"):
        return None
    u = sqlalchemy.make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


# --------------------------------------------------------------------------------- storages
def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (dashboard, status) work while a worker writes; NORMAL sync is safe with WAL.
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """What happens to a trial whose worker died or was interrupted: a new trial with the same
    params and user attrs, that resumes from the dead one's checkpoint. Its intermediate values
    are not inherited: the dead trial may have reported epochs past its last checkpoint, which the
    retry trains (and reports) again; the objective reports the epochs up to the checkpoint."""
    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


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
    url = storage_url(url)
    shown = mask_url(url)
    if url.startswith("grpc://"):
        return _grpc_storage(url, shown)
    if heartbeat and heartbeat_interval is None:
        heartbeat_interval = _env_seconds(HEARTBEAT_ENV, HEARTBEAT_INTERVAL_S)
    if heartbeat and grace_period is None:
        grace_period = _env_seconds(GRACE_ENV, GRACE_PERIOD_S)
    try:  # (a StudyError raised in here passes the handlers below unchanged)
        if urlsplit(url).netloc.count("@") > 1:  # the driver would split the password and print its tail
            raise StudyError(f"storage {shown}: percent-encode '@' in the user or password as %40")
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
            engine_kwargs = {"pool_pre_ping": True}  # ... and wait out a restart (search/reconnect.py)
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
    except sqlalchemy.exc.NoSuchModuleError:  # before ArgumentError: it is a subclass
        raise StudyError(f"storage {shown}: unknown database scheme '{url.split(':', 1)[0]}'") from None
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: e.g. a port that is no number
        raise StudyError(
            f"storage {shown}: not a valid URL (e.g. sqlite:///storage/stl-tune.db, "
            "postgresql+psycopg://user:pass@host/db, grpc://host:port)"
        ) from None
    except ImportError as e:  # Optuna re-raises the driver's ImportError with a generic text
        raise StudyError(f"storage {shown}: missing database driver ({e.__cause__ or e})") from None
    except Timeout:
        raise StudyError(f"storage {shown}: another process holds {db}.lock") from None
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, OSError) as e:
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
    url = compat.storage_url(storage)
    if url:
        return mask_url(url)
    address = compat.grpc_address(storage)
    return f"grpc://{address[0]}:{address[1]}" if address else type(storage).__name__


def _open(storage: BaseStorage | str | None) -> BaseStorage:
    return storage if isinstance(storage, BaseStorage) else open_storage(storage)


# ------------------------------------------------------------------------- samplers, pruners
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


# ---------------------------------------------------------------------------------- studies
def create_or_load_study(
    spec: StudySpec, name: str | None, storage: BaseStorage | str | None, *, worker: int = 0
) -> optuna.Study:
    """The study `name` (default spec.name), created with `spec` stored in its user attrs if new.

    Run this once before workers start. A second run with the same spec continues the study; a
    different spec under the same name is refused, since mixing search spaces misleads the sampler.
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
    elif stored != want:
        diff = [k for k in want if stored.get(k) != want[k]]
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
