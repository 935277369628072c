"""Storage URLs: which one a command uses, and printing them (and the errors they cause) without a
password.

    sqlite:///storage/stl-tune.db        default; one machine, several worker processes
    postgresql://user:pass@host/db       several machines (psycopg 3: postgresql+psycopg://...)
    grpc://host:port                     `stl-tune proxy` in front of a database: few connections for
                                         many workers; Optuna has no heartbeat through it, so the proxy
                                         fails dead workers' trials itself (docs/SCALING.md)
Passwords never reach the terminal or a log: everything printed goes through mask_url (or
error_line, for a driver's message).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy

from stl_tune.search.settings import DEFAULT_STORAGE, STORAGE_ENV


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
