"""Storage URLs and opening storages: URL precedence, masked passwords, SQLite in WAL mode and made
on demand (never by a reader), heartbeat settings, one-line errors without the password."""

import sqlite3

import optuna
import pytest
import sqlalchemy

from stl_tune.errors import StudyError
from stl_tune.search import settings
from stl_tune.search.storage import storages, urls

SECRET = "s3cr3tpw"


def sqlite_url(tmp_path, rel="deep/er/db.sqlite") -> str:
    return f"sqlite:///{tmp_path / rel}"


def test_storage_url_precedence(monkeypatch):
    monkeypatch.delenv(settings.STORAGE_ENV, raising=False)
    assert urls.storage_url(None) == settings.DEFAULT_STORAGE
    monkeypatch.setenv(settings.STORAGE_ENV, "sqlite:///env.db")
    assert urls.storage_url(None) == "sqlite:///env.db"
    assert urls.storage_url("sqlite:///arg.db") == "sqlite:///arg.db"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://user:{SECRET}@host:5432/db",
        f"postgresql+psycopg://user:{SECRET}@host/db?sslmode=require",
        f"mysql+pymysql://user:{SECRET}%40%3A@host/db",  # percent-encoded @ and :
        f"postgresql://user:{SECRET}@with@at@host/db",  # a raw @ in the password
        f"postgresql://:{SECRET}@host/db",  # password without user
        f"postgresql://host/db?user=u&password={SECRET}&sslmode=require",
        f"postgresql://host/db?PWD={SECRET}",
        f"no-such-scheme://user:{SECRET}@host",
    ],
)
def test_mask_url_hides_passwords(url):
    masked = urls.mask_url(url)
    assert SECRET not in masked and "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]


@pytest.mark.parametrize(
    "url", ["sqlite:///storage/stl-tune.db", "grpc://localhost:13000", "postgresql://user@host/db"]
)
def test_mask_url_keeps_urls_without_password(url):
    assert urls.mask_url(url) == url


def test_sqlite_storage_created_on_demand_in_wal_mode(tmp_path):
    storage = storages.open_storage(sqlite_url(tmp_path))
    optuna.create_study(storage=storage, study_name="x")
    db = tmp_path / "deep/er/db.sqlite"
    assert db.is_file()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.heartbeat_interval == settings.HEARTBEAT_INTERVAL_S
    retry = storage.heartbeat_stale_trial_callback
    assert isinstance(retry, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert storages.open_storage(sqlite_url(tmp_path), heartbeat=False).heartbeat_interval is None


def test_readers_do_not_create_a_storage(tmp_path):
    with pytest.raises(StudyError, match=r"no study storage at .*db\.sqlite; start a search with `stl-tune run`"):
        storages.open_storage(sqlite_url(tmp_path), heartbeat=False, create=False)
    assert not (tmp_path / "deep").exists()  # neither the file nor its folders
    storages.open_storage(sqlite_url(tmp_path))  # a worker creates it; then readers open it
    assert storages.open_storage(sqlite_url(tmp_path), heartbeat=False, create=False).heartbeat_interval is None


def test_heartbeat_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.HEARTBEAT_ENV, "7")
    monkeypatch.setenv(settings.GRACE_ENV, "21")
    storage = storages.open_storage(sqlite_url(tmp_path))
    assert (storage.heartbeat_interval, storage.grace_period) == (7, 21)
    explicit = storages.open_storage(sqlite_url(tmp_path), heartbeat_interval=2, grace_period=6)
    assert (explicit.heartbeat_interval, explicit.grace_period) == (2, 6)
    monkeypatch.setenv(settings.GRACE_ENV, "soon")
    with pytest.raises(StudyError, match=r"\$STL_TUNE_GRACE_PERIOD must be a whole number"):
        storages.open_storage(sqlite_url(tmp_path))
    assert storages.open_storage(sqlite_url(tmp_path), heartbeat=False).heartbeat_interval is None  # readers ignore it


@pytest.mark.parametrize(
    "url,needle",
    [
        (f"nosuchdb://user:{SECRET}@host/db", "unknown database scheme"),
        (f"mysql+nosuchdriver://user:{SECRET}@host/db", "unknown database scheme"),
        (f"postgresql+asyncpg://user:{SECRET}@host/db", "missing database driver"),
        # port 1 on loopback: refused at once, nothing leaves the machine
        (f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/db", "cannot open it"),
        ("not a url", "not a valid URL"),
        (f"postgresql+psycopg://user:{SECRET}@127.0.0.1:abc/db", "not a valid URL"),  # a port that is no number
        # an unencoded @ in the password: the driver would take the part after it for the host
        (f"postgresql+psycopg://user:{SECRET}@pwtail@127.0.0.1:1/db", "percent-encode '@'"),
        ("grpc://localhost", "grpc://host:port"),
    ],
)
def test_bad_storage_urls_are_one_line_without_password(url, needle):
    with pytest.raises(StudyError) as e:
        storages.open_storage(url)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and SECRET not in msg and "pwtail" not in msg


@pytest.mark.parametrize(
    "typo, line",
    [
        (
            "sqlite://storage/x.db",
            (
                "error: storage sqlite://storage/x.db: a SQLite URL has no host; did you mean "
                "sqlite:///storage/x.db? (three slashes, then the file's path)"
            ),
        ),
        (
            f"postgres://user:{SECRET}@127.0.0.1:1/db",
            (
                "error: storage postgres://user:***@127.0.0.1:1/db: unknown "
                "database scheme 'postgres'; did you mean "
                "postgresql://user:***@127.0.0.1:1/db?"
            ),
        ),
        (
            f"mongodb://user:{SECRET}@host/db",
            (
                "error: storage mongodb://user:***@host/db: unknown database scheme "
                f"'mongodb'; accepted: {urls.ACCEPTED}"
            ),
        ),
    ],
)
def test_status_and_run_say_the_same_line_for_a_storage_typo_before_the_data(
    typo, line, tmp_path, tiny_study, no_download, monkeypatch
):
    import yaml
    from typer.testing import CliRunner

    from stl_tune.cli import app

    monkeypatch.chdir(tmp_path)  # a URL that did open would make its file here
    tiny_study["fixed"]["data"]["dir"] = str(tmp_path / "no-data-yet")  # a data scan would try a download
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    runner = CliRunner()
    status = runner.invoke(app, ["status", "--storage", typo])
    run = runner.invoke(app, ["run", "--study", str(study_file), "--storage", typo, "--trials", "1"])
    assert status.exit_code == run.exit_code == 2, status.output + run.output
    assert status.output == run.output == line + "\n"  # one line, the same, and no password
    assert no_download == [] and not any(tmp_path.rglob("*.db"))  # before the data scan; nothing made


def test_a_server_storage_pings_and_hides_a_wrong_password(postgres_url):
    """A real server: pooled connections are tested before use; a wrong password leaks in no message."""
    storage = storages.open_storage(postgres_url)
    assert storage.engine.pool._pre_ping  # a restarted server costs a reconnect, not the workers
    u = sqlalchemy.make_url(postgres_url)
    wrong = u.set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(StudyError) as e:
        storages.open_storage(wrong)
    assert "cannot open it" in str(e.value) and SECRET not in str(e.value) and u.password not in str(e.value)
