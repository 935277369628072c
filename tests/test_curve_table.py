"""benchmarks/build_curve_table.py on a tiny split-layout folder: every (config, seed) run lands in
the table with its full curve and test accuracy, the known recipe is config 0, Ctrl-C keeps the run
under way, a rerun resumes (kept runs untouched, only the missing ones trained) and a table of
other settings is refused."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "benchmarks" / "build_curve_table.py"
pytestmark = pytest.mark.slow


def split_folder(root: Path) -> Path:
    """3 classes x 100 training and 10 test images, 8 px: the scaled space's batch of 256 fits."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 100), ("test", 10)):
        for c in range(3):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8) // (c + 1)  # class = brightness
                Image.fromarray(pixels, mode="L").save(d / f"{i}.png")
    return root


def command(tmp_path: Path, data: Path, table: Path, *extra: str) -> dict:
    args = ["--data-dir", str(data), "--image-size", "8", "--table", str(table), "--workers", "1", "--seeds", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return {"args": [sys.executable, str(BUILDER), *args, *extra], "env": env, "text": True}


def build(tmp_path: Path, data: Path, table: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(**command(tmp_path, data, table, *extra), capture_output=True, timeout=280)


def build_with_ctrl_c(tmp_path: Path, data: Path, table: Path, *extra: str) -> tuple[int, str]:
    """The builder, and Ctrl-C to its process group (as a terminal sends it) once a training process
    exists: the first run is under way."""
    proc = subprocess.Popen(
        **command(tmp_path, data, table, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not psutil.Process(proc.pid).children() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=280)
    return proc.returncode, out


def rows(table: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in table.read_text().splitlines()]
    return lines[0], lines[1:]


def test_builds_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    data, table = split_folder(tmp_path / "data"), tmp_path / "table.jsonl"
    first = build(tmp_path, data, table, "--configs", "2", "--epochs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    header, runs = rows(table)
    assert (header["format"], header["epochs"], header["seeds"], header["configs"]) == (1, 1, 2, 2)
    assert "model.width" in header["search_space"] and "data" not in header["fixed"]
    assert sorted((r["config"], r["seed"]) for r in runs) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in runs:
        assert r["status"] == "completed" and len(r["val"]) == len(r["seconds"]) == 1
        assert 0 <= r["val"][0] <= 1 and 0 <= r["test"] <= 1
        # the config as a search would run it: the simulator applies its patience to the full curve
        assert r["cfg"]["seed"] == r["seed"] and r["cfg"]["eval"]["patience"] == header["fixed"]["eval"]["patience"]
        assert "dir" not in r["cfg"]["data"]  # no host path in a committed table
    recipe = next(r for r in runs if r["config"] == 0)
    assert recipe["params"]["optim.name"] == "adamw" and recipe["params"]["lr_adamw"] == 1e-3  # the known recipe
    assert runs[0]["params"] != next(r for r in runs if r["config"] == 1)["params"]

    kept = table.read_text().splitlines()[1:]
    code, out = build_with_ctrl_c(tmp_path, data, table, "--configs", "3", "--epochs", "1")
    assert code == 0 and "stopping: the runs under way finish and are kept" in out, out
    added = int(re.search(r"^stopped: (\d)/2 runs added to .*; the same command resumes$", out, re.M)[1])
    assert added >= 1  # the run under way at Ctrl-C (a second only if the first finished before the signal came)
    assert len(rows(table)[1]) == 4 + added and table.read_text().splitlines()[1:5] == kept
    more = build(tmp_path, data, table, "--configs", "3", "--epochs", "1")
    assert more.returncode == 0, more.stdout + more.stderr
    assert f"{4 + added} runs kept, {2 - added} to train" in more.stdout
    header, runs = rows(table)
    assert header["configs"] == 3 and table.read_text().splitlines()[1:5] == kept
    assert sorted((r["config"], r["seed"]) for r in runs)[-2:] == [(2, 0), (2, 1)]

    other = build(tmp_path, data, table, "--configs", "3", "--epochs", "2")
    assert other.returncode != 0 and "holds a table of other settings" in other.stderr
    assert len(rows(table)[1]) == 6  # refused before touching the file


def test_bad_data_or_a_foreign_table_is_one_line_before_any_write(tmp_path: Path) -> None:
    table = tmp_path / "table.jsonl"
    missing = build(tmp_path, tmp_path / "nowhere", table, "--configs", "2", "--epochs", "1")
    assert missing.returncode == 1 and missing.stderr.strip() == f"folder dataset not found: {tmp_path / 'nowhere'}"
    assert not table.exists()

    table.write_text("# notes, not a table\n")
    foreign = build(tmp_path, split_folder(tmp_path / "data"), table, "--configs", "2", "--epochs", "1")
    assert foreign.returncode == 1 and foreign.stderr.strip() == f"{table} is not a curve table: use another --table"
    assert table.read_text() == "# notes, not a table\n"
