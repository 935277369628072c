"""GPU slot planning and per-worker environments, on a CPU: CUDA is faked, processes are real."""

import os
import subprocess
import sys

import optuna
import pytest
import torch

from stl_tune.errors import UserError
from stl_tune.search.worker import launch as W


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_one_slot_per_gpu_and_packing(four_gpus):
    assert W.plan_slots("all") == ["0", "1", "2", "3"]
    assert W.plan_slots("1,3", workers_per_gpu=2) == ["1", "1", "3", "3"]
    assert W.plan_slots("none", workers=3) == [None, None, None]
    with pytest.raises(UserError, match="no GPU 4 here"):
        W.plan_slots("0,4")
    with pytest.raises(UserError, match="--gpus must be all, none or indices"):
        W.plan_slots("first")


def test_slots_keep_the_parents_device_names(four_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # this process sees physical GPUs 5 and 7
    assert W.plan_slots("all") == ["5", "7"]
    assert W.plan_slots("1") == ["7"]


def test_no_gpus_asked_for_counts_none_and_keeps_this_process_off_them(monkeypatch):
    """--gpus none on a GPU host: no count (it would start CUDA's driver with the GPUs visible),
    and the process that trains on CPU itself (an in-process worker, run's cost probe) hides them
    before torch starts CUDA, as its children's environments do."""
    from stl_tune.search.worker.session import WorkerOptions

    def count():
        raise AssertionError("counted the GPUs")

    monkeypatch.setattr(torch.cuda, "device_count", count)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert WorkerOptions(gpus="none", workers=2).slots() == [None, None]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_a_process_with_a_gpu_slot_or_cuda_started_keeps_its_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    W.keep_off_gpus(["1", None])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # too late to hide: changing it now misleads
    W.keep_off_gpus([None])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_no_gpu_means_cpu_workers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert W.plan_slots("all", workers=2) == [None, None]
    assert W.plan_slots("all") == [None]


def test_each_worker_sees_only_its_gpu(storage_url, tmp_path, monkeypatch):
    url = storage_url  # a PostgreSQL URL carries a password: it must not reach argv
    study = optuna.create_study(study_name="slots", storage=url)
    seen = []
    real_popen = subprocess.Popen

    def popen(cmd, env, **kwargs):  # record the worker's command and environment, run a stand-in
        seen.append((cmd, env))
        probe = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"
        return real_popen([sys.executable, "-c", probe], env=env, **kwargs)

    monkeypatch.setattr(W.subprocess, "Popen", popen)
    code = W.launch(study, url, ["2", "2", "5"], n_trials=1, artifacts=tmp_path / "a")
    assert code == 1  # the stand-ins finish no trial
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in seen] == ["2", "2", "5"]
    assert all(env["STL_TUNE_STORAGE"] == url and url not in " ".join(cmd) for cmd, env in seen)
    assert [cmd[cmd.index("--worker-index") + 1] for cmd, _ in seen] == ["0", "1", "2"]  # distinct seeds
    assert all(cmd[cmd.index("--gpus") + 1] == "all" for cmd, _ in seen)  # all = the one it sees


def test_a_cpu_workers_environment_has_no_gpu_and_its_share_of_compile_threads(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    cpu, gpu = W.worker_env("sqlite:///x.db", None, 3), W.worker_env("sqlite:///x.db", "1", 3)
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and gpu["CUDA_VISIBLE_DEVICES"] == "1"
    assert cpu["TORCHINDUCTOR_COMPILE_THREADS"] == gpu["TORCHINDUCTOR_COMPILE_THREADS"] == "3"
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "8")  # the user's choice is kept
    assert W.worker_env("sqlite:///x.db", None, 3)["TORCHINDUCTOR_COMPILE_THREADS"] == "8"


@pytest.mark.parametrize("device", ["cuda:1", "cuda"])
def test_a_device_no_worker_can_have_is_one_line_before_any_study(device, tiny_study, tmp_path):
    """cuda:1 fails every trial (each worker sees one GPU, as cuda:0); cuda on CPU workers too."""
    import yaml
    from typer.testing import CliRunner

    from stl_tune.cli import app

    tiny_study["fixed"]["runtime"]["device"] = device
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    db = tmp_path / "s.db"
    result = CliRunner().invoke(
        app, ["run", "--study", str(study_file), "--trials", "1", "--gpus", "none", "--storage", f"sqlite:///{db}"]
    )
    assert result.exit_code != 0 and f"runtime.device {device}:" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not db.exists()
