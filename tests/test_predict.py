"""`stl-tune predict`: unlabelled images in, a CSV of classes and probabilities out, decoded and
flip-TTA'd exactly as `evaluate` scores them; a model or an ensemble; one line for what is not an
image. The tiny model is trained per module on fake STL-10 (about 2 s)."""

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import stl_tune
from stl_tune import config as C
from stl_tune.cli import app
from stl_tune.data import load_data, read_stl10_split
from stl_tune.outputs import save_ensemble, write_outputs
from stl_tune.train import predict, train

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models: more threads only contend
runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(fake_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    cfg = C.from_dict(
        None,
        {
            "data.dir": str(fake_data),
            "data.image_size": 16,
            "model.width": 4,
            "model.blocks": [1, 1, 1, 1],
            "optim.epochs": 4,
            "optim.lr": 3e-3,
            "optim.batch_size": 16,
            "augment.mix_epochs": 0,
            "ema.decay": 0.9,
        },
    )
    write_outputs(out, cfg, train(cfg, evaluate_test=True))
    return out / "model.pt"


@pytest.fixture
def photos(fake_data, tmp_path) -> tuple[Path, torch.Tensor]:
    """30 of fake STL-10's test images as photos/<i>.png in nested folders, with a notes.txt beside
    them; (the folder, the images in file order as uint8)."""
    x = read_stl10_split(fake_data, "test")[0][:30]
    root = tmp_path / "photos"
    files = []
    for i, img in enumerate(x):
        f = root / ("day1" if i < 15 else "day2") / f"{i:02d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(f)
        files.append(f)
    (root / "day1" / "notes.txt").write_text("where these were taken")
    return root, x


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_predict_writes_the_classes_evaluate_would_score(model_file, photos, tmp_path):
    root, x = photos
    out = tmp_path / "predictions.csv"
    res = runner.invoke(
        app, ["predict", "--model", str(model_file), "--images", str(root), "-o", str(out), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith(
        f"classified 30 images, flip TTA; skipped 1 file that is not an image: notes.txt: wrote {out}"
    )
    rows = read_csv(out)
    assert [Path(r["file"]).name for r in rows] == [f"{i:02d}.png" for i in range(30)]  # recursive, in path order
    assert list(rows[0]) == ["file", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    model = stl_tune.load_model(model_file)
    # the same images as the trainer reads them (STL-10 binaries, resized as for training)
    small = load_data(model.config.data, seed=0, with_test=True).test_x[:30]
    expected = predict(model, small, model.config, torch.device("cpu"))
    assert [r["class"] for r in rows] == [model.classes[i] for i in expected]
    for r in rows:
        p = [float(r[k]) for k in ("probability", "probability_2", "probability_3")]
        assert p == sorted(p, reverse=True) and 0 < sum(p) <= 1.0001
        assert len({r["class"], r["class_2"], r["class_3"]}) == 3


def test_predict_takes_files_a_shell_glob_and_an_ensemble(model_file, photos, tmp_path):
    root, _ = photos
    ensemble = tmp_path / "ensemble.pt"
    save_ensemble(ensemble, [model_file, model_file])
    files = sorted((root / "day2").glob("*.png"))  # as the shell expands --images photos/day2/*.png
    out = tmp_path / "p.csv"
    res = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(ensemble),
            "--images",
            *map(str, files),
            "-o",
            str(out),
            "--top-k",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = read_csv(out)
    assert [r["file"] for r in rows] == list(map(str, files)) and list(rows[0]) == ["file", "class", "probability"]
    single = tmp_path / "single.csv"
    runner.invoke(app, ["predict", "--model", str(model_file), "--images", str(root / "day2"), "-o", str(single)])
    # an ensemble of one model twice is that model
    assert [(r["class"], r["probability"]) for r in rows] == [(r["class"], r["probability"]) for r in read_csv(single)]


def test_what_is_not_an_image_is_one_line(model_file, photos, tmp_path):
    root, _ = photos
    (tmp_path / "empty").mkdir()
    broken = root / "day1" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    cases = [
        (root / "day1" / "notes.txt", f"error: {root / 'day1' / 'notes.txt'}: not an image file"),
        (tmp_path / "missing.png", f"error: not found: {tmp_path / 'missing.png'}"),
        (tmp_path / "empty", f"error: no image files in {tmp_path / 'empty'}"),
        (broken, f"error: {broken}: cannot read this image"),
    ]
    for image, message in cases:
        res = runner.invoke(
            app, ["predict", "--model", str(model_file), "--images", str(image), "-o", str(tmp_path / "p.csv")]
        )
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert res.output.startswith(message), res.output
    assert not (tmp_path / "p.csv").exists()
