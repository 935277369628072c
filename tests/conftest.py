"""Shared fixtures: tiny fake STL-10 data, and a real PostgreSQL server for the storage tests."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin",)  # Debian's layout; else initdb on PATH


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` are skipped where torch sees no GPU."""
    import torch

    if not torch.cuda.is_available():
        for item in items:
            if item.get_closest_marker("cuda"):
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A throw-away PostgreSQL server on 127.0.0.1 with a password-protected role; its SQLAlchemy URL.

    PostgreSQL refuses to run as root, so under root (CI) the server runs as `nobody`.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/15/bin or PATH")
    as_root = os.geteuid() == 0
    # Not under pytest's tmp dir: that one is private to root, and the server user must reach it.
    root = Path(tempfile.mkdtemp(prefix="stl-tune-pg-"))
    user, password, db, port = "stltune", secrets.token_hex(12), "stltune", _free_port()
    (root / "pwfile").write_text(password + "\n")
    run_as: list[str] = []
    if as_root:
        run_as = ["runuser", "-u", "nobody", "--"]
        shutil.chown(root, "nobody")
        shutil.chown(root / "pwfile", "nobody")
    data, log = root / "data", root / "server.log"

    def pg(*args: str) -> None:
        subprocess.run([*run_as, str(bindir / args[0]), *args[1:]], check=True, capture_output=True, timeout=120)

    pg("initdb", "-D", str(data), "-U", user, f"--pwfile={root / 'pwfile'}", "--auth=scram-sha-256",
       "--encoding=UTF8", "--no-sync")  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    pg("pg_ctl", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f"CREATE DATABASE {db}")
        yield f"postgresql+psycopg://{user}:{password}@127.0.0.1:{port}/{db}"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


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

    monkeypatch.setattr(data, "download_and_extract_archive", offline)
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
