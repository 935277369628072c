import importlib.metadata
import json
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from stl_tune.cli import app

# tiny models: more threads only contend; decoded folders are cached under tmp_path
pytestmark = pytest.mark.usefixtures("single_thread", "image_cache")
runner = CliRunner()
TINY = [
    "--set",
    "data.image_size=16",
    "--set",
    "model.width=4",
    "--set",
    "model.blocks=[1,1,1,1]",
    "--set",
    "optim.batch_size=32",
    "--set",
    "optim.epochs=2",
    "--set",
    "eval.batch_size=200",
    "--set",
    "runtime.device=cpu",
]


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
    # the same command again shows the finished run: it trains and rewrites nothing
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = runner.invoke(app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY])
    assert again.exit_code == 0, again.output
    assert again.output.startswith(f"{out} holds a finished run: completed after 2 epochs: best val ")
    assert f"test {metrics['test_acc']:.2%} (a new --out trains again)" in again.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # another config in the same --out is not trained over it (nor resumed from its checkpoint)
    other = runner.invoke(
        app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY, "--set", "optim.lr=2e-3"]
    )
    assert other.exit_code == 2 and other.output.strip() == (
        f"error: {out} holds a run of another config (optim.lr: 0.001 -> 0.002): use a new --out for this one"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_train_seeds_writes_each_seed_the_spread_and_the_ensemble(fake_dir, tmp_path):
    out = tmp_path / "seeds"
    learn = [
        "--set",
        "optim.epochs=4",
        "--set",
        "optim.lr=3e-3",
        "--set",
        "optim.batch_size=16",
        "--set",
        "augment.mix_epochs=0",
        "--set",
        "ema.decay=0.9",
    ]
    base = ["train", "--data-dir", str(fake_dir), "--out", str(out), *TINY, *learn]
    # one seed: no ensemble yet, and OUT/model.pt is that seed's model (docs/COMMANDS.md's evaluate command works)
    first = runner.invoke(app, [*base, "--seeds", "0"])
    assert first.exit_code == 0, first.output
    assert (out / "model.pt").read_bytes() == (out / "seed-0" / "model.pt").read_bytes()
    assert json.loads((out / "summary.json").read_text())["ensemble"] is None
    args = [*base, "--seeds", "0,3"]
    result = runner.invoke(app, args)  # seed 0 is found finished; seed 3 trains
    assert result.exit_code == 0, result.output
    assert result.output.count("holds a finished run") == 1
    from stl_tune import config as C

    accs = []
    for seed in (0, 3):
        assert C.load(out / f"seed-{seed}" / "config.yaml").seed == seed
        assert (out / f"seed-{seed}" / "model.pt").is_file()
        accs.append(json.loads((out / f"seed-{seed}" / "metrics.json").read_text())["test_acc"])
    assert accs[0] != accs[1]  # the seeds ran apart: a spread of 0 would hide a wrong formula
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 3] and [r["test_acc"] for r in summary["runs"]] == accs
    mean, std = (
        torch.tensor(accs, dtype=torch.float64).mean().item(),
        torch.tensor(accs, dtype=torch.float64).std().item(),
    )
    assert summary["test_acc_mean"] == pytest.approx(mean) and summary["test_acc_std"] == pytest.approx(std)
    assert f"test accuracy {100 * mean:.1f} % ± {100 * std:.1f} over 2 seeds" in result.output
    # the ensemble: the members' softmax averaged, with flip TTA, scored on the test split
    ens = summary["ensemble"]
    assert ens["file"] == "ensemble.pt" and ens["members"] == ["seed-0", "seed-3"]
    assert (out / "model.pt").read_bytes() == (out / "ensemble.pt").read_bytes()
    assert ens["test_acc"] == pytest.approx(_ensemble_accuracy(fake_dir, [out / "seed-0", out / "seed-3"]))
    assert ens["classes"] == json.loads((out / "seed-0" / "metrics.json").read_text())["classes"]
    assert sum(map(sum, ens["confusion"])) == 50 and len(ens["per_class_acc"]) == 10
    assert f"ensemble of 2 seeds ({out / 'ensemble.pt'}, also {out / 'model.pt'}): test accuracy" in result.output
    # each seed resumes like a single run: the same command again trains and rewrites nothing
    before = (out / "summary.json").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.output.count("holds a finished run") == 2
    assert (out / "summary.json").stat().st_mtime_ns == before and f"summary in {out / 'summary.json'}" in again.output


def _ensemble_accuracy(fake_dir: Path, members: list[Path]) -> float:
    """Test accuracy of the members' averaged softmax, computed here from the member files: for the
    image and its mirror, the log of the mean of the members' probabilities; the two averaged."""
    import stl_tune
    from stl_tune.config import DataConfig
    from stl_tune.data import load_data

    models = [stl_tune.load_model(m / "model.pt") for m in members]
    test = load_data(DataConfig(dir=str(fake_dir), image_size=16), seed=0, with_test=True)
    x, y = test.test_x.float() / 255, test.test_y
    with torch.no_grad():
        views = [torch.stack([m(v).softmax(1) for m in models]).mean(0).log() for v in (x, x.flip(-1))]
    return ((views[0] + views[1]).argmax(1) == y).float().mean().item()


def test_train_on_a_class_folder_needs_only_the_data_dir(tmp_path):
    root = tmp_path / "pets"
    _write_class_folders(root, {"cat": 30, "dog": 30, "owl": 30})
    (root / "dog" / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(root), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"data: folder {root}: class layout (<class>/; test: 20% of each class, "
        "fixed), 3 classes, 66 train / 6 val / 18 test images; skipped 1 file that is "
        "not an image: notes.txt\n"
    )
    assert "completed after 2 epochs" in result.output
    from stl_tune import config as C

    assert C.load(out / "config.yaml").data.source == "auto"  # as written: resolved again where it runs


def _write_class_folders(root: Path, counts: dict[str, int]) -> None:
    g = torch.Generator().manual_seed(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(img.numpy()).save(root / name / f"{i}.png")


def test_a_corrupt_image_is_one_line_before_any_training(tmp_path):
    root = tmp_path / "pets"
    _write_class_folders(root, {"cat": 10, "dog": 10})
    (root / "cat" / "3.png").write_bytes((root / "cat" / "3.png").read_bytes()[:60])
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--data-dir", str(root), "--out", str(out), *TINY])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {root / 'cat' / '3.png'}: cannot read this image (")
    assert not out.exists()  # nothing started


def _signal_at_epoch(monkeypatch, epoch: int, *signals: int) -> None:
    """Deliver `signals` to this process as the 0-based `epoch` starts, as Ctrl-C or kill would."""
    from stl_tune import train as T

    real = T.label_smoothing_at

    def smoothing(e, cfg):
        if e == epoch:
            for s in signals:
                signal.raise_signal(s)
        return real(e, cfg)

    monkeypatch.setattr(T, "label_smoothing_at", smoothing)


LONG = [
    *TINY,
    "--set",
    "optim.epochs=4",
    "--set",
    "runtime.checkpoint_interval_s=3600",
]  # no timed checkpoint after epoch 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_checkpoints_the_epoch_and_says_how_to_resume(fake_dir, tmp_path, monkeypatch, sig):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(fake_dir), "--out", str(out), *LONG]
    handler = signal.getsignal(sig)
    _signal_at_epoch(monkeypatch, 1, sig)  # during epoch 2 of 4
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    assert result.output.strip().endswith(
        f"stopped at epoch 2 of 4, saved in {out / 'checkpoint.pt'}: the same command (same --out) resumes there"
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()  # not a finished run
    assert signal.getsignal(sig) is handler
    monkeypatch.undo()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "resumed from epoch 2" in again.output and "completed after 4 epochs" in again.output


def test_a_second_ctrl_c_stops_at_once(fake_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _signal_at_epoch(monkeypatch, 1, signal.SIGINT, signal.SIGINT)
    result = runner.invoke(app, ["train", "--data-dir", str(fake_dir), "--out", str(out), *LONG])
    assert result.exit_code == 130, result.output
    assert result.output.strip().endswith(
        "stopped at once in epoch 2 of 4: the same command (same --out) resumes from epoch 1"
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"stl-tune {importlib.metadata.version('stl-tune')}\n"


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


@pytest.mark.parametrize(
    "command",
    [["train"], ["ensemble"], ["evaluate", "--model", "m.pt", "--data-dir", "d"], ["report"]],
)
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short path: the error box wraps at 80 columns
    Path("afile").write_text("keep me")
    result = runner.invoke(app, [*command, "--out", "afile"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dir 'afile' is a file" in result.output and Path("afile").read_text() == "keep me"


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
