"""Storage URLs: which one a command uses, and printing them (and the errors they cause) without a
password.

    sqlite:///storage/stl-tune.db        default; one machine, several worker processes
    postgresql://user:pass@host/db       several machines (psycopg 3: postgresql+psycopg://...)
    grpc://host:port                     `stl-tune proxy` in front of a database: few connections for
                                         many workers; Optuna has no heartbeat through it, so the proxy
                                         fails dead workers' trials itself (docs/SCALING.md)
Every command takes its URL from storage_url, which checks it (check_url) before anything else
happens (a data scan, a study): the same typo is the same line from every command, with a hint where
the intended URL is plain. Passwords never reach the terminal or a log: everything printed goes
through mask_url (or error_line, for a driver's message).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy

from stl_tune.errors import StudyError
from stl_tune.search.settings import DEFAULT_STORAGE, STORAGE_ENV

ACCEPTED = "sqlite:///PATH, postgresql://, postgresql+psycopg://, mysql+pymysql://, grpc://host:port"


def storage_url(url: str | None) -> str:
    """--storage, else $STL_TUNE_STORAGE, else the default SQLite file; checked (check_url)."""
    url = url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    check_url(url)
    return url


def check_url(url: str) -> None:
    """A one-line StudyError (password masked) for a URL that names no storage, before any attempt
    to open it: not a URL, a scheme SQLAlchemy has no dialect for (postgres://: hint postgresql://;
    others: the accepted schemes), a SQLite URL with two slashes (sqlite://storage/x.db reads
    `storage` as a host: hint sqlite:///storage/x.db), an unencoded '@' in the user or password.
    grpc:// URLs are checked where they are opened (storages.py)."""
    shown = mask_url(url)
    if url.startswith("grpc://"):
        return
    if urlsplit(url).netloc.count("@") > 1:  # the driver would split the password and print its tail
        raise StudyError(f"storage {shown}: percent-encode '@' in the user or password as %40")
    try:
        u = sqlalchemy.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: e.g. a port that is no number
        raise StudyError(f"storage {shown}: not a valid URL (e.g. {ACCEPTED})") from None
    scheme = url.split(":", 1)[0]
    try:
        u.get_dialect()  # loads the dialect, not its driver (a missing driver is told on opening)
    except sqlalchemy.exc.NoSuchModuleError:
        if u.get_backend_name() == "postgres":  # the name SQLAlchemy dropped in 1.4
            raise StudyError(
                f"storage {shown}: unknown database scheme '{scheme}'; "
                f"did you mean {mask_url('postgresql' + url[len('postgres') :])}?"
            ) from None
        raise StudyError(f"storage {shown}: unknown database scheme '{scheme}'; accepted: {ACCEPTED}") from None
    if u.get_backend_name() == "sqlite" and u.host:
        path = "/".join(filter(None, [u.host, u.database]))
        raise StudyError(
            f"storage {shown}: a SQLite URL has no host; did you mean sqlite:///{path}? "
            "(three slashes, then the file's path)"
        )


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
