"""`stl-tune dashboard` in a real subprocess: it serves the study's trials and binds loopback only."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from browser import free_port

from stl_tune.search import create_or_load_study
from stl_tune.search.spec.space import StudySpec

SPEC = {"name": "dash", "search_space": {"model.width": {"type": "int", "low": 4, "high": 8}}}


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def listen_addresses(port: int) -> set[str]:
    """Local IPv4 addresses (hex, as the kernel writes them) listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(addr)
    return found


@pytest.mark.slow
def test_dashboard_serves_study_on_loopback(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = create_or_load_study(StudySpec.from_dict(SPEC), None, url)
    for value in (0.1, 0.3, 0.2):
        study.add_trial(optuna.create_trial(value=value, params={}, distributions={}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stl_tune", "dashboard", "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120  # a loaded machine: the suite runs in parallel
        while True:
            try:
                studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "dashboard did not come up"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["dash"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 3
        assert [t["values"] for t in detail["best_trials"]] == [[0.3]]
        if Path("/proc/net/tcp").exists():
            assert listen_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0
    finally:
        proc.send_signal(signal.SIGINT)  # bottle stops cleanly on KeyboardInterrupt
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert f"http://127.0.0.1:{port}/dashboard" in out and url in out


def test_port_in_use_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from stl_tune.cli import app

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_or_load_study(StudySpec.from_dict(SPEC), None, url)
    runner = CliRunner()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runner.invoke(app, ["dashboard", "--storage", url, "--port", str(port)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert f"error: port {port} on 127.0.0.1 is in use (or not allowed); pass --port" in r.output
    for bad, why in (("0", "greater than or equal to 1"), ("70000", "less than or equal to 65535")):
        r = runner.invoke(app, ["dashboard", "--storage", url, "--port", bad])
        assert r.exit_code == 2 and why in r.output and "Traceback" not in r.output


def test_missing_storage_is_not_created(tmp_path):
    from typer.testing import CliRunner

    from stl_tune.cli import app

    r = CliRunner().invoke(app, ["dashboard", "--storage", f"sqlite:///{tmp_path / 'none' / 'db.sqlite'}"])
    assert r.exit_code == 2 and "no study storage at" in r.output and "stl-tune run" in r.output
    assert not (tmp_path / "none").exists()
