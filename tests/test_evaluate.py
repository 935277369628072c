"""The final model on its own: model.pt loads back into the same network (stl_tune.load_model), an
ensemble.pt into the members' averaged probabilities, and `stl-tune evaluate` scores folder
datasets in both layouts with either, matching classes by name (a subset of them too).

One tiny model is trained per module on fake STL-10; its test images, written as PNG folders,
must score exactly as `train` scored them."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import stl_tune
from stl_tune import config as C
from stl_tune import data
from stl_tune.cli import app
from stl_tune.data import read_stl10_split
from stl_tune.errors import UserError
from stl_tune.outputs import MODEL_VERSION, Ensemble, save_ensemble, write_outputs
from stl_tune.train import train

# tiny models: more threads only contend; decoded folders are cached under tmp_path
pytestmark = pytest.mark.usefixtures("single_thread", "image_cache")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(fake_data, tmp_path_factory):
    """(run folder with model.pt and checkpoint.pt, its TrainResult, its config)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    cfg = C.from_dict(
        None,
        {
            "data.dir": str(fake_data),
            "data.image_size": 16,
            "model.width": 4,
            "model.blocks": [1, 1, 1, 1],
            "optim.epochs": 8,
            "optim.lr": 3e-3,
            "optim.batch_size": 16,
            "optim.warmup_epochs": 1,
            "augment.randaugment_ops": 0,
            "augment.mix_epochs": 0,
            "ema.decay": 0.9,
            "eval.batch_size": 32,
            "runtime.device": "cpu",  # the 100 test images in several batches
        },
    )
    result = train(cfg, checkpoint=out / "checkpoint.pt", evaluate_test=True)
    write_outputs(out, cfg, result)
    # the comparisons below have teeth only if the model tells classes apart a little (~2 s of
    # training): a model that predicts one class for every image would match any class mapping
    assert sum(1 for column in zip(*result.confusion) if sum(column)) >= 5
    # and the folders, listed by name, are in another order than the model's classes
    assert sorted(result.classes) != result.classes
    return out, result, cfg


def write_pngs(root: Path, split: str, fake_data: Path, classes: list[str], per_class: int | None = None) -> int:
    """The fake STL-10 `split`'s images (the first per_class of each class, or all) as
    root/<class>/<i>.png, lossless; returns how many."""
    x, y = read_stl10_split(fake_data, split)
    n = 0
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, img in enumerate(x[y == c][:per_class]):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / name / f"{i}.png")
            n += 1
    return n


def run_evaluate(model: Path, data_dir: Path, out: Path):
    return runner.invoke(
        app, ["evaluate", "--model", str(model), "--data-dir", str(data_dir), "--out", str(out), "--device", "cpu"]
    )


# ------------------------------------------------------------------------------------ load_model
def test_load_model_rebuilds_the_trained_network(trained):
    out, result, cfg = trained
    model = stl_tune.load_model(out / "model.pt")
    assert not any(m.training for m in model.modules())
    assert model.classes == result.classes and len(model.classes) == 10
    assert model.config == cfg and next(model.parameters()).device.type == "cpu"
    x = read_stl10_split(cfg.data.dir, "test")[0][:40]
    x = torch.nn.functional.interpolate(x.float() / 255, size=16, mode="bilinear")
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), result.model(x))
    # the input statistics the model was trained with come back too (buffers, not the defaults)
    assert torch.equal(model.mean, result.model.mean) and not torch.allclose(model.mean, torch.tensor(0.5))


def test_a_file_that_is_not_a_model_is_one_line(trained, tmp_path):
    out = trained[0]
    with pytest.raises(UserError, match=r"checkpoint.pt is not an stl-tune model file \(a resume checkpoint"):
        stl_tune.load_model(out / "checkpoint.pt")
    (tmp_path / "notes.pt").write_text("not a tensor file")
    torch.save(argparse.Namespace(a=1), tmp_path / "object.pt")  # weights_only=True refuses the class
    torch.save({"state_dict": {}}, tmp_path / "dict.pt")
    for name in ("notes.pt", "object.pt", "dict.pt"):
        with pytest.raises(UserError, match=f"{name} is not an stl-tune model file"):
            stl_tune.load_model(tmp_path / name)
    with pytest.raises(UserError, match="model file not found"):
        stl_tune.load_model(tmp_path / "missing.pt")
    saved = torch.load(out / "model.pt", weights_only=True)
    saved["state_dict"]["head.weight"] = saved["state_dict"]["head.weight"][:5]
    torch.save(saved, tmp_path / "other.pt")
    with pytest.raises(UserError, match="written by another version of stl-tune"):
        stl_tune.load_model(tmp_path / "other.pt")


# -------------------------------------------------------------------------------------- evaluate
def test_split_layout_scores_test_exactly_as_train_did(trained, fake_data, tmp_path):
    out, result, _ = trained
    root = tmp_path / "split"
    write_pngs(root / "train", "train", fake_data, result.classes, per_class=1)  # must not be scored
    n = write_pngs(root / "test", "test", fake_data, result.classes)
    res = run_evaluate(out / "model.pt", root, tmp_path / "eval")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["layout"] == "split" and metrics["images"] == n == 100
    assert "the 100 images of test/" in res.output and "flip TTA" in res.output
    # the same images, read from PNG files in name-sorted class folders: train's very scores
    assert metrics["confusion"] == result.confusion and metrics["accuracy"] == pytest.approx(result.test_acc)
    assert metrics["per_class_acc"] == pytest.approx(result.per_class_acc)
    assert metrics["classes"] == result.classes
    assert f"accuracy {result.test_acc:.2%}" in res.output
    for name in result.classes:
        assert name in res.output  # the per-class table
    with Image.open(tmp_path / "eval" / "confusion.png") as img:
        assert min(img.size) >= 500 and len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 10


def test_class_layout_scores_every_image(trained, fake_data, tmp_path):
    out, result, _ = trained
    root = tmp_path / "pets"
    n = write_pngs(root, "test", fake_data, result.classes)
    res = run_evaluate(out / "model.pt", root, tmp_path / "eval")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # every image, not train's fixed test share of a class-layout folder (20 %: 20 images here)
    assert metrics["layout"] == "class" and metrics["images"] == n == 100
    assert "all 100 images (class layout" in res.output
    assert metrics["confusion"] == result.confusion


def test_default_out_folder_is_beside_the_model(trained, fake_data, tmp_path):
    out, result, _ = trained
    model = tmp_path / "final" / "model.pt"
    model.parent.mkdir()
    shutil.copy(out / "model.pt", model)
    write_pngs(tmp_path / "birds", "test", fake_data, result.classes, per_class=2)
    res = runner.invoke(app, ["evaluate", "--model", str(model), "--data-dir", str(tmp_path / "birds")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "final" / "eval-birds" / "metrics.json").read_text())["images"] == 20


def test_classes_the_model_does_not_know_are_one_line(trained, fake_data, tmp_path):
    out, result, _ = trained
    root = tmp_path / "other"
    write_pngs(root, "test", fake_data, result.classes, per_class=2)
    (root / result.classes[3]).rename(root / "cat")
    res = run_evaluate(out / "model.pt", root, tmp_path / "eval")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip() == (
        f"error: {root}: class folders the model does not know: 'cat' "
        f"(the model's 10 classes: {', '.join(result.classes)})"
    )
    assert not (tmp_path / "eval").exists()


def test_stl10_binaries_are_one_line_that_says_where_their_test_score_is(trained, fake_data, tmp_path):
    res = run_evaluate(trained[0] / "model.pt", fake_data, tmp_path / "eval")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{fake_data} holds STL-10's binaries, not a folder dataset" in res.output
    assert "metrics.json or summary.json" in res.output and not (tmp_path / "eval").exists()


def test_names_that_differ_only_in_case_are_pointed_out(trained, fake_data, tmp_path):
    out, result, _ = trained
    root = tmp_path / "shouty"
    write_pngs(root, "test", fake_data, result.classes, per_class=1)
    (root / result.classes[0]).rename(root / result.classes[0].upper())
    res = run_evaluate(out / "model.pt", root, tmp_path / "eval")
    assert res.exit_code == 2
    assert (
        f"names must match exactly, case included: rename '{result.classes[0].upper()}' to "
        f"'{result.classes[0]}' (the model's"
    ) in res.output


def test_a_folder_of_some_of_the_classes_scores_those(trained, fake_data, tmp_path):
    out, result, cfg = trained
    root = tmp_path / "some"
    keep = result.classes[2:5]
    write_pngs(root, "test", fake_data, result.classes)
    for name in set(result.classes) - set(keep):
        shutil.rmtree(root / name)
    res = run_evaluate(out / "model.pt", root, tmp_path / "eval")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 30 and metrics["missing"] == [c for c in result.classes if c not in keep]
    # the rows of the classes scored are train's rows of them; an image predicted as another class is wrong
    rows = {c: result.confusion[result.classes.index(c)] for c in keep}
    assert [metrics["confusion"][result.classes.index(c)] for c in keep] == list(rows.values())
    assert metrics["accuracy"] == pytest.approx(sum(r[result.classes.index(c)] for c, r in rows.items()) / 30)
    assert [a is None for a in metrics["per_class_acc"]] == [c not in keep for c in result.classes]
    assert "the folder holds 3 of the model's 10 classes: scored those" in res.output


def test_evaluate_refuses_a_checkpoint(trained, fake_data, tmp_path):
    out, result, _ = trained
    write_pngs(tmp_path / "d", "test", fake_data, result.classes, per_class=1)
    res = run_evaluate(out / "checkpoint.pt", tmp_path / "d", tmp_path / "eval")
    assert res.exit_code == 2 and res.output.startswith("error: ") and "resume checkpoint" in res.output
    assert len(res.output.strip().splitlines()) == 1


# -------------------------------------------------------------------------------------- ensembles
@pytest.fixture(scope="module")
def ensemble(trained, tmp_path_factory):
    """ensemble.pt of the trained model and a second member whose logits are tripled (other
    probabilities, the same argmax): the members' average differs from either member's."""
    out = trained[0]
    folder = tmp_path_factory.mktemp("ensemble")
    saved = torch.load(out / "model.pt", weights_only=True)
    saved["state_dict"]["head.weight"] = saved["state_dict"]["head.weight"] * 3
    saved["state_dict"]["head.bias"] = saved["state_dict"]["head.bias"] * 3 + torch.arange(10) * 0.5
    torch.save(saved, folder / "other.pt")
    save_ensemble(folder / "ensemble.pt", [out / "model.pt", folder / "other.pt"])
    return folder / "ensemble.pt", [out / "model.pt", folder / "other.pt"]


def test_an_ensemble_loads_as_one_model_of_averaged_probabilities(ensemble, trained):
    path, members = ensemble
    model = stl_tune.load_model(path)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    assert model.classes == trained[1].classes and model.config == trained[2]
    assert torch.load(path, weights_only=True)["version"] == MODEL_VERSION
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        probs = torch.stack([stl_tune.load_model(m)(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(model(x).exp(), probs, atol=1e-6)


def test_evaluate_scores_an_ensemble(ensemble, trained, fake_data, tmp_path):
    path, members = ensemble
    root = tmp_path / "pets"
    write_pngs(root, "test", fake_data, trained[1].classes)
    res = run_evaluate(path, root, tmp_path / "eval")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the trainer's own flip TTA over the ensemble: the mean of both views' log averaged probabilities
    test = data.load_data(C.DataConfig(dir=str(fake_data), image_size=16), seed=0, with_test=True)
    x, y = test.test_x.float() / 255, test.test_y
    nets = [stl_tune.load_model(m) for m in members]
    with torch.no_grad():
        views = [torch.stack([n(v).softmax(1) for n in nets]).mean(0).log() for v in (x, x.flip(-1))]
    assert metrics["accuracy"] == pytest.approx(((views[0] + views[1]).argmax(1) == y).float().mean().item())


def test_a_version_1_model_file_still_loads(trained, tmp_path):
    out, result, _ = trained
    saved = torch.load(out / "model.pt", weights_only=True)
    del saved["kind"]
    saved["version"] = 1
    torch.save(saved, tmp_path / "v1.pt")
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(stl_tune.load_model(tmp_path / "v1.pt")(x), stl_tune.load_model(out / "model.pt")(x))
    saved["version"] = 4
    torch.save(saved, tmp_path / "v4.pt")
    with pytest.raises(UserError, match="format version 4; this stl-tune reads versions 1, 2, 3"):
        stl_tune.load_model(tmp_path / "v4.pt")


def test_a_weighted_ensemble_averages_by_its_weights(ensemble, tmp_path):
    _, members = ensemble
    save_ensemble(tmp_path / "weighted.pt", members, weights=[3, 1])  # normalised: 0.75, 0.25
    saved = torch.load(tmp_path / "weighted.pt", weights_only=True)
    assert [m["weight"] for m in saved["members"]] == [0.75, 0.25]
    model = stl_tune.load_model(tmp_path / "weighted.pt")
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        p = [stl_tune.load_model(m)(x).softmax(1) for m in members]
        assert torch.allclose(model(x).exp(), 0.75 * p[0] + 0.25 * p[1], atol=1e-6)
        # a version-2 ensemble has no weights: its members count equally
        for m in saved["members"]:
            del m["weight"]
        saved["version"] = 2
        torch.save(saved, tmp_path / "v2.pt")
        assert torch.allclose(stl_tune.load_model(tmp_path / "v2.pt")(x).exp(), (p[0] + p[1]) / 2, atol=1e-6)
    with pytest.raises(UserError, match="one positive weight per member"):
        save_ensemble(tmp_path / "bad.pt", members, weights=[1, 0])
