"""benchmarks/device_check.sh --dry-run: every command of the device check parses and starts on a
CPU (tiny sizes, the tests only collected), and the summary reads what each step left."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["install", "versions", "fake-data", "tests-all", "tests-cuda", "bench-w64-b64", "search-wpg1", "search-wpg2"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_run_starts_every_command_and_writes_the_results(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks/device_check.sh"), "--dry-run", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=590,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.strip().endswith(f"not ok: none; {out}/results.json"), run.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(
        ["results.json", "setup.log", "tests-cuda.log", "tests-all.log", "bench.log", "search.log", "nvidia-smi.log"]
    )  # at most 8 files come back from a device machine
    res = json.loads((out / "results.json").read_text())
    assert sorted(s["step"] for s in res["steps"]) == sorted(STEPS)
    assert all(s["exit"] == 0 for s in res["steps"]), res["steps"]
    assert res["versions"]["torch"] == torch.__version__ and res["versions"]["packages"]["optuna"]
    assert "test_cuda_steps_raise_no_sync_error" in (out / "tests-cuda.log").read_text()  # the cuda tests, collected
    figures = {(f["row"], f["figure"]): f["value"] for f in res["bench"]["bench-w64-b64"]["figures"]}
    assert figures[("stl-tune", "img_per_s")] > 0 and ("stl-tune", "projection_min") in figures
    for k in (1, 2):  # --workers k here, --gpus all --workers-per-gpu k there
        search = res["search"][f"workers_per_gpu_{k}"]
        assert search["trials_finished"] == k and search["trial_seconds_median"] > 0, search
    assert not list(tmp_path.glob("device-check.*"))  # the scratch folder is removed
