"""Storages, samplers, pruners and creating studies once: URL precedence, masked passwords,
SQLite in WAL mode, one-line errors, idempotent creation from several processes."""

import multiprocessing
import sqlite3
import uuid

import optuna
import pytest
import sqlalchemy

from stl_tune.search import study as S
from stl_tune.search.optuna_compat import SharedHyperband
from stl_tune.search.space import StudyError, StudySpec

SECRET = "s3cr3tpw"


def make_spec(**changes) -> StudySpec:
    d = {
        "name": "t",
        "search_space": {"model.width": {"type": "int", "low": 4, "high": 8}},
        "fixed": {"optim.epochs": 3},
        **changes,
    }
    return StudySpec.from_dict(d)


def sqlite_url(tmp_path, rel="deep/er/db.sqlite") -> str:
    return f"sqlite:///{tmp_path / rel}"


def test_storage_url_precedence(monkeypatch):
    monkeypatch.delenv(S.STORAGE_ENV, raising=False)
    assert S.storage_url(None) == S.DEFAULT_STORAGE
    monkeypatch.setenv(S.STORAGE_ENV, "sqlite:///env.db")
    assert S.storage_url(None) == "sqlite:///env.db"
    assert S.storage_url("sqlite:///arg.db") == "sqlite:///arg.db"


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
    masked = S.mask_url(url)
    assert SECRET not in masked and "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]


@pytest.mark.parametrize(
    "url", ["sqlite:///storage/stl-tune.db", "grpc://localhost:13000", "postgresql://user@host/db"]
)
def test_mask_url_keeps_urls_without_password(url):
    assert S.mask_url(url) == url


def test_sqlite_storage_created_on_demand_in_wal_mode(tmp_path):
    storage = S.open_storage(sqlite_url(tmp_path))
    optuna.create_study(storage=storage, study_name="x")
    db = tmp_path / "deep/er/db.sqlite"
    assert db.is_file()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert storage.heartbeat_interval == S.HEARTBEAT_INTERVAL_S
    retry = storage.heartbeat_stale_trial_callback
    assert isinstance(retry, optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert S.open_storage(sqlite_url(tmp_path), heartbeat=False).heartbeat_interval is None


def test_readers_do_not_create_a_storage(tmp_path):
    with pytest.raises(StudyError, match=r"no study storage at .*db\.sqlite; start a search with `stl-tune run`"):
        S.open_storage(sqlite_url(tmp_path), heartbeat=False, create=False)
    assert not (tmp_path / "deep").exists()  # neither the file nor its folders
    S.open_storage(sqlite_url(tmp_path))  # a worker creates it; then readers open it
    assert S.open_storage(sqlite_url(tmp_path), heartbeat=False, create=False).heartbeat_interval is None


def test_heartbeat_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(S.HEARTBEAT_ENV, "7")
    monkeypatch.setenv(S.GRACE_ENV, "21")
    storage = S.open_storage(sqlite_url(tmp_path))
    assert (storage.heartbeat_interval, storage.grace_period) == (7, 21)
    explicit = S.open_storage(sqlite_url(tmp_path), heartbeat_interval=2, grace_period=6)
    assert (explicit.heartbeat_interval, explicit.grace_period) == (2, 6)
    monkeypatch.setenv(S.GRACE_ENV, "soon")
    with pytest.raises(StudyError, match=r"\$STL_TUNE_GRACE_PERIOD must be a whole number"):
        S.open_storage(sqlite_url(tmp_path))
    assert S.open_storage(sqlite_url(tmp_path), heartbeat=False).heartbeat_interval is None  # readers ignore it


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
        S.open_storage(url)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and SECRET not in msg and "pwtail" not in msg


def test_create_or_load_study_is_idempotent_and_stores_spec(tmp_path):
    url, spec = sqlite_url(tmp_path), make_spec()
    first = S.create_or_load_study(spec, None, url)
    again = S.create_or_load_study(spec, None, S.open_storage(url))
    assert first.study_name == again.study_name == "t" and first._study_id == again._study_id
    assert first.user_attrs["spec"] == spec.to_dict()
    other = S.create_or_load_study(spec, "renamed", url)
    assert other.study_name == "renamed"
    assert optuna.get_all_study_names(S.open_storage(url)) == ["t", "renamed"]
    with pytest.raises(StudyError, match="different search_space"):
        changed = make_spec(search_space={"model.width": {"type": "int", "low": 4, "high": 16}})
        S.create_or_load_study(changed, None, url)


def test_load_study_round_trips_spec(tmp_path):
    url, spec = sqlite_url(tmp_path), make_spec(pruner={"name": "hyperband", "min_resource": 1})
    S.create_or_load_study(spec, None, url)
    study, loaded = S.load_study("t", url)
    assert loaded == spec and study.study_name == "t"
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert S.load_study(None, url)[1] == spec  # the only study
    with pytest.raises(StudyError, match="no study 'nope' in sqlite:.*studies there: t"):
        S.load_study("nope", url)
    optuna.create_study(storage=S.open_storage(url), study_name="foreign")
    with pytest.raises(StudyError, match="no stl-tune spec"):
        S.load_study("foreign", url)
    with pytest.raises(StudyError, match="pass --name"):
        S.load_study(None, url)


@pytest.mark.parametrize(
    "sampler,cls",
    [({"name": "tpe"}, optuna.samplers.TPESampler), ({"name": "random"}, optuna.samplers.RandomSampler)],
)
@pytest.mark.parametrize(
    "pruner,pcls",
    [
        ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"name": "hyperband_shared"}, SharedHyperband),
        ({"name": "median"}, optuna.pruners.MedianPruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_sampler_and_pruner_choices(sampler, cls, pruner, pcls):
    spec = make_spec(sampler=sampler, pruner=pruner)
    assert type(S.make_sampler(spec)) is cls
    assert type(S.make_pruner(spec)) is pcls


def test_workers_draw_different_seeded_streams():
    spec = make_spec(sampler={"name": "random", "seed": 3})

    def first_widths(worker):
        study = optuna.create_study(sampler=S.make_sampler(spec, worker))
        return [study.ask().suggest_int("w", 0, 10**9) for _ in range(3)]

    assert first_widths(0) == first_widths(0)  # reproducible per worker
    assert first_widths(0) != first_widths(1)  # but workers do not repeat each other


def test_bad_sampler_option_value_is_a_study_error():
    spec = make_spec(sampler={"name": "tpe", "multivariate": False, "group": True})
    with pytest.raises(StudyError, match="sampler TPESampler: bad option"):
        S.make_sampler(spec)


def _create_and_add_trial(url: str, barrier) -> None:
    barrier.wait()  # all processes race for the creation at once
    study = S.create_or_load_study(make_spec(), None, url)
    study.add_trial(optuna.create_trial(value=1.0, params={}, distributions={}))


@pytest.mark.slow
def test_several_processes_create_the_study_once(tmp_path):
    url = sqlite_url(tmp_path)
    ctx = multiprocessing.get_context("fork")  # no re-import: the race is the same
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_create_and_add_trial, args=(url, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    storage = S.open_storage(url, heartbeat=False)
    assert optuna.get_all_study_names(storage) == ["t"]
    assert len(optuna.load_study(study_name="t", storage=storage).trials) == 3


@pytest.mark.slow
def test_postgres_storage(postgres_url):
    """The same create/load round trip on a real server; a wrong password leaks in no message."""
    storage = S.open_storage(postgres_url)
    assert storage.engine.pool._pre_ping  # a restarted server costs a reconnect, not the workers
    spec = make_spec(name=f"pg-{uuid.uuid4().hex[:8]}")
    first = S.create_or_load_study(spec, None, storage)
    assert S.create_or_load_study(spec, None, postgres_url)._study_id == first._study_id
    assert S.load_study(spec.name, postgres_url)[1] == spec
    u = sqlalchemy.make_url(postgres_url)
    wrong = u.set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(StudyError) as e:
        S.open_storage(wrong)
    assert "cannot open it" in str(e.value) and SECRET not in str(e.value) and u.password not in str(e.value)
