"""Shared fixtures: tiny fake STL-10 data, a real PostgreSQL server for the session, and the storage
matrix that runs a test on SQLite and on PostgreSQL.

The suite runs in several processes at once (pytest-xdist, `-n` in pyproject.toml): each is a
session of its own, so each has its own fake data, temporary folders and PostgreSQL server, on a
port of its own (Postgres.first_start tries another port if one is taken meanwhile). A server per
process, not one shared: the tests of a server's faults stop and restart it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import free_port

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)  # Debian's layout; else initdb on PATH


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped where torch sees no GPU. In a parallel run the tests marked
    `slow` go first, in file order otherwise: pytest-xdist hands tests out in this order, so the
    long ones run side by side from the start instead of one of them ending the run alone."""
    import torch

    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects, and must order, the same way
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _cuda_visible_devices_kept() -> Iterator[None]:
    """A CPU worker run in-process hides the GPUs from its process (launch.keep_off_gpus): the
    next test gets this process's CUDA_VISIBLE_DEVICES back."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    yield
    if before is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = before


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake STL-10 folder (use as data.dir): 20 labelled images per class, 10 test images per class."""
    from stl_tune.data import write_fake_stl10

    return write_fake_stl10(tmp_path_factory.mktemp("fake-stl10"), train_per_class=20, test_per_class=10)


def _pg_bin() -> Path | None:
    for d in PG_BIN_DIRS:
        if (Path(d) / "initdb").is_file():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class Postgres:
    """A throw-away PostgreSQL server on 127.0.0.1 with a password-protected role, started once per
    session: a database of its own for each test that asks (new_database), and a stop and start
    as an administrator does them (stopped), for the tests of a server's faults.

    PostgreSQL refuses to run as root, so under root (CI) the server runs as `nobody`.
    """

    USER, DB = "stltune", "stltune"

    def __init__(self, bindir: Path) -> None:
        self.bindir, self.port, self.password = bindir, free_port(), secrets.token_hex(12)
        # Not under pytest's tmp dir: that one is private to root, and the server user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="stl-tune-pg-"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.run_as = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        (self.root / "pwfile").write_text(self.password + "\n")
        if self.run_as:
            shutil.chown(self.root, "nobody")
            shutil.chown(self.root / "pwfile", "nobody")
        self._count = 0

    @property
    def options(self) -> str:
        # max_connections: each test's own processes and pools, with room for those not yet closed
        return (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c max_connections=300"
        )

    def _pg(self, *args: str) -> None:
        # -l (a log file): the server must not inherit our pipes, which run() would wait for.
        subprocess.run(
            [*self.run_as, str(self.bindir / args[0]), *args[1:]], check=True, capture_output=True, timeout=120
        )

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "-t", "60", "start")

    def first_start(self, tries: int = 5) -> None:
        """Start on a free port: between free_port() and the server's bind, another process of the
        parallel suite may have taken it (the server then exits: 'Address already in use')."""
        for _ in range(tries - 1):
            try:
                return self.start()
            except subprocess.CalledProcessError:
                if "already in use" not in self.log.read_text(errors="replace"):
                    raise
                self.port = free_port()
        self.start()

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stopped as an administrator stops it for a restart (-m fast: every open connection is
        cut, transactions in flight are rolled back), and started again on leaving."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def url(self, db: str) -> str:
        return f"postgresql+psycopg://{self.USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.USER, password=self.password, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        self._count += 1
        name = f"{self.DB}_{self._count}"
        self.sql(f"CREATE DATABASE {name}")
        return name


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """The session's PostgreSQL server (Postgres)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/15/bin or PATH")
    server = Postgres(bindir)
    server._pg(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        server.USER,
        f"--pwfile={server.root / 'pwfile'}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-sync",
    )
    server.first_start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database on the session's PostgreSQL server, dropped after
    the test (with the connections still open to it)."""
    db = postgres.new_database()
    yield postgres.url(db)
    postgres.sql(f"DROP DATABASE {db} WITH (FORCE)")


STORAGES = ("sqlite", "postgresql")


@pytest.fixture(params=STORAGES)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The storage matrix, as Optuna's optuna/testing/storages.py has one: a test that takes this
    fixture runs once on a new SQLite file and once on a new PostgreSQL database (the session's
    server), the two storages whose code differs below the workers (search/storage/storages.py)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/study.db"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def tiny_study(fake_data: Path) -> dict:
    """A study file's content for trainings of about a second on fake_data; tests adjust it."""
    return {
        "name": "tiny",
        "search_space": {
            "optim.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "model.se": {"type": "categorical", "choices": [True, False]},
        },
        "fixed": {
            "data": {"dir": str(fake_data), "image_size": 16},
            "model": {"width": 4, "blocks": [1, 1, 1, 1]},
            "optim": {"epochs": 2, "batch_size": 32, "warmup_epochs": 1},
            "augment": {"randaugment_ops": 0},
            # the CPU on a GPU host too; a checkpoint every epoch: resume tests stop trials anywhere
            "runtime": {"device": "cpu", "checkpoint_interval_s": 0},
        },
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
    }


@pytest.fixture
def worker_env(tmp_path: Path) -> dict[str, str]:
    """Environment for worker subprocesses: fast heartbeats (a dead worker is noticed within
    seconds), one torch thread each (2 shared cores), unbuffered output, and temporary files
    (local checkpoints) under the test's folder, since a killed worker cannot remove its own."""
    return {
        **os.environ,
        "TMPDIR": str(tmp_path),
        "STL_TUNE_HEARTBEAT_INTERVAL": "1",
        "STL_TUNE_GRACE_PERIOD": "4",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any STL-10 download attempt fail as it would offline; returns the URLs tried."""
    from stl_tune import data

    calls: list[str] = []

    def offline(url, download_root, **kwargs):
        calls.append(url)
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data.stl10, "download_and_extract_archive", offline)
    return calls


@pytest.fixture
def image_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The decode cache of folder datasets (stl_tune.data.image_cache_dir) in a fresh temporary
    folder instead of ~/.cache (beside tmp_path, which tests fill with datasets); returns it."""
    xdg = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    return xdg / "stl-tune" / "images"


@pytest.fixture
def single_thread():
    """One torch thread for in-process trainings: tiny models gain nothing from more, and spinning
    OpenMP threads on shared cores can make them ten times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def nan_loss(monkeypatch):
    """nan_loss(steps): the training loss turns NaN after `steps` optimizer steps. Real blow-ups
    (a huge learning rate) depend on the data and the step count, so tests of the divergence
    handling force it."""
    import torch

    def arm(steps: int) -> None:
        real, calls = torch.nn.functional.cross_entropy, []

        def cross_entropy(*args, **kwargs):
            calls.append(1)
            loss = real(*args, **kwargs)
            return loss * float("nan") if len(calls) > steps else loss

        monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)

    return arm
