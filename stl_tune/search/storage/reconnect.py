"""The storage for a database server: it waits out a lost server (a restart, a fail-over, a dropped
link) instead of failing the storage call under way, and counts a study's trials by state in the
database.

pool_pre_ping (storages.open_storage) only replaces pooled connections that died while idle. A
statement in flight when the server goes away, and every connection attempt until it is back,
still raise. SQLAlchemy's answer is to re-run the whole transaction (its FAQ, "How do I 'retry' a
statement execution automatically?"), and each call of Optuna's RDBStorage is one transaction: so
a call that loses the server is re-run as a whole, after a pause that grows from 0.1 to 2 s, for up
to RECONNECT_S seconds. A call made from inside another (create_new_trial runs _create_new_trial)
raises instead, and the outer call is re-run: a transaction is never re-run in part.

What a re-run cannot tell: a commit that the server made but whose reply the connection lost (a
crash or a cut link at that very moment). Re-run, such a call finds its work done: setting a
finished trial's state again raises UpdateFinishedTrialError, and a trial may be created twice,
as Optuna's own re-run of create_new_trial on deadlocks can.

Relied upon in Optuna: RDBStorage's one transaction per method, methods handed a `session` running
inside another's (tests/test_postgres_faults.py covers it); its private trial table and attributes
come through search/optuna_compat.py.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from stl_tune.search import optuna_compat as compat
from stl_tune.search.storage.urls import error_line

RECONNECT_S = 120  # a restart or fail-over takes seconds; past this the server is down and the call fails
_PAUSES_S = (0.1, 2.0)  # first and longest pause between attempts

log = logging.getLogger(__name__)
_in_call = threading.local()  # .active: a re-runnable call is under way in this thread


def lost_server(e: BaseException) -> sqlalchemy.exc.DBAPIError | None:
    """The error in `e`'s chain (Optuna wraps SQLAlchemy's in StorageInternalError) that says the
    server could not be reached or dropped the connection, rather than refused the request; None
    when there is none. On PostgreSQL an OperationalError is one of those (refused, shut down, cut,
    too many connections, a deadlock); bad data raises DataError or IntegrityError."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError) or (
            isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _rerun_on_lost_server(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: ReconnectingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_in_call, "active", False):
            return method(self, *args, **kwargs)  # inside another call's transaction: that one re-runs
        deadline, pause = time.monotonic() + RECONNECT_S, _PAUSES_S[0]
        while True:
            _in_call.active = True
            try:
                result = method(self, *args, **kwargs)
            except Exception as e:
                lost = lost_server(e)
                if lost is None or time.monotonic() + pause > deadline:
                    raise
                self._lost(lost)
            else:
                self._back()
                return result
            finally:
                _in_call.active = False
            time.sleep(pause)
            pause = min(2 * pause, _PAUSES_S[1])

    return call


class ReconnectingRDBStorage(RDBStorage):
    """Optuna's RDBStorage, each call re-run while the server cannot be reached (module doc)."""

    _lost_at: float | None = None  # when this process lost the server; None while it answers

    @_rerun_on_lost_server
    def count_states(self, study_id: int) -> Counter[TrialState]:
        """The study's trials per state, counted by the database: one GROUP BY over the trial rows
        (no params, attrs or reports)."""
        trial = compat.trial_model()
        query = (
            sqlalchemy.select(trial.state, sqlalchemy.func.count())
            .where(trial.study_id == study_id)
            .group_by(trial.state)
        )
        with self.engine.connect() as conn:
            return Counter({state: n for state, n in conn.execute(query)})

    def _lost(self, e: sqlalchemy.exc.DBAPIError) -> None:
        if self._lost_at is None:  # one line per outage, not per call
            self._lost_at = time.monotonic()
            log.warning("database connection lost; retrying for up to %d s: %s", RECONNECT_S, error_line(e, self.url))

    def _back(self) -> None:
        if self._lost_at is not None:
            log.warning("database connection back after %.1f s", time.monotonic() - self._lost_at)
            self._lost_at = None


# Every method of RDBStorage that runs a transaction of its own: all but those handed the caller's session.
for _name, _method in inspect.getmembers(RDBStorage, inspect.isfunction):
    if _name.startswith("__") or isinstance(inspect.getattr_static(RDBStorage, _name), staticmethod):
        continue
    if "session" not in inspect.signature(_method).parameters:
        setattr(ReconnectingRDBStorage, _name, _rerun_on_lost_server(_method))


def database_of(study: optuna.Study) -> tuple[ReconnectingRDBStorage, int] | None:
    """The server storage behind a study (inside the trial cache Optuna wraps around it) and the
    study's id there; None for SQLite, a gRPC proxy or memory."""
    backend = compat.backend(compat.storage_of(study))
    return (backend, compat.study_id(study)) if isinstance(backend, ReconnectingRDBStorage) else None
