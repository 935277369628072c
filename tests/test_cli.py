import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stl_tune.cli import app

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: more threads only contend
runner = CliRunner()
TINY = ["--set", "data.image_size=16", "--set", "model.width=4", "--set", "model.blocks=[1,1,1,1]",
        "--set", "optim.batch_size=32", "--set", "optim.epochs=2", "--set", "eval.batch_size=200",
        "--set", "runtime.device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-fake")
    result = runner.invoke(app, ["data", "fake", "--out", str(out), "--train-per-class", "12", "--test-per-class", "5"])
    assert result.exit_code == 0, result.output
    assert "120 train and 50 test images" in result.output
    return out


def test_data_fake_writes_stl10_layout(fake_dir):
    names = {p.name for p in (fake_dir / "stl10_binary").iterdir()}
    assert {"train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"} <= names
    assert (fake_dir / "stl10_binary" / "train_X.bin").stat().st_size == 120 * 3 * 96 * 96


def test_train_end_to_end_writes_every_artefact(fake_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "completed after 2 epochs" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and len(metrics["history"]) == 2
    assert 0 <= metrics["test_acc"] <= 1 and 0 <= metrics["best_val_acc"] <= 1
    assert len(metrics["per_class_acc"]) == 10 and sum(map(sum, metrics["confusion"])) == 50
    from stl_tune import config as C

    assert C.load(out / "config.yaml").model.width == 4
    weights = torch.load(out / "model.pt", weights_only=True)
    assert weights["config"]["model"]["width"] == 4 and "head.weight" in weights["state_dict"]
    with Image.open(out / "curves.png") as img:
        assert img.size[0] > 500 and len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10  # drew something
    # the same command again finds the finished checkpoint and does not train anew
    again = runner.invoke(app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY])
    assert again.exit_code == 0 and json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == 2
    assert "holds a finished run" in again.output


def test_train_seeds_writes_each_seed_and_the_spread(fake_dir, tmp_path):
    out = tmp_path / "seeds"
    learn = ["--set", "optim.epochs=4", "--set", "optim.lr=3e-3", "--set", "optim.batch_size=16",
             "--set", "augment.mix_epochs=0", "--set", "ema.decay=0.9"]  # fmt: skip
    args = ["train", "--data-dir", str(fake_dir), "--out", str(out), "--seeds", "0,3", *TINY, *learn]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from stl_tune import config as C

    accs = []
    for seed in (0, 3):
        assert C.load(out / f"seed-{seed}" / "config.yaml").seed == seed
        assert (out / f"seed-{seed}" / "model.pt").is_file()
        accs.append(json.loads((out / f"seed-{seed}" / "metrics.json").read_text())["test_acc"])
    assert accs[0] != accs[1]  # the seeds ran apart: a spread of 0 would hide a wrong formula
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 3] and [r["test_acc"] for r in summary["runs"]] == accs
    mean, std = torch.tensor(accs, dtype=torch.float64).mean().item(), torch.tensor(accs, dtype=torch.float64).std().item()
    assert summary["test_acc_mean"] == pytest.approx(mean) and summary["test_acc_std"] == pytest.approx(std)
    assert f"test accuracy {100 * mean:.1f} % ± {100 * std:.1f} over 2 seeds" in result.output
    # each seed resumes like a single run: the same command again trains nothing
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("holds a finished run") == 2
    assert json.loads((out / "summary.json").read_text()) == summary


def test_train_reports_divergence(fake_dir, tmp_path, nan_loss):
    nan_loss(0)
    out = tmp_path / "nan"
    result = runner.invoke(app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY])
    assert result.exit_code == 1 and "diverged: the loss became NaN at epoch 1" in result.output
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.widht=8"], "error: unknown config key 'model.widht' (did you mean model.width?)"),
        (["--set", "optim.lr=-1"], "error: optim.lr=-1.0 is out of range"),
        (["--set", "optim.lr"], "error: --set expects key=value"),
        (["--config", "missing.yaml"], "error: config file not found: missing.yaml"),
        (["--config", "."], "error: . is a folder, not a config file"),
        (["--seeds", "0,x"], "error: --seeds expects a comma list of seeds such as 0,1,2, got '0,x'"),
        (["--seeds", "1,2,1"], "error: --seeds expects distinct seeds >= 0, got '1,2,1'"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.output.strip() == message or result.output.strip().startswith(message)
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_malformed_yaml_and_missing_data(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1,\n")
    result = runner.invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    empty = tmp_path / "empty"
    (empty / "stl10_binary").mkdir(parents=True)
    (empty / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 1000)
    (empty / "stl10_binary" / "train_y.bin").write_bytes(b"\1")
    result = runner.invoke(app, ["train", "--data-dir", str(empty), "--out", str(tmp_path / "o"), *TINY])
    assert result.exit_code == 2 and "train_X.bin" in result.output and "Traceback" not in result.output
