"""The data against a study, before any trial: the largest batch a trial can draw must fit the
fewest training images it can have, on this host's data."""

import copy

import pytest

from stl_tune.data import DataError, write_fake_stl10
from stl_tune.errors import StudyError
from stl_tune.search.spec.datacheck import check_against_data
from stl_tune.search.spec.space import StudySpec

# fake_data: 20 training images in each of 10 classes; the 10 % validation split leaves 180.
BATCH = "optim.batch_size"


def batch_study(study: dict, entry: dict | None = None, fixed: int | None = None) -> StudySpec:
    """tiny_study with optim.batch_size searched as `entry`, or fixed to `fixed`."""
    del study["fixed"]["optim"]["batch_size"]
    if entry is not None:
        study["search_space"][BATCH] = entry
    if fixed is not None:
        study["fixed"]["optim"]["batch_size"] = fixed
    return StudySpec.from_dict(study, "studies/tiny.yaml")  # each value alone is in range: it loads


@pytest.mark.parametrize(
    "entry, fixed, largest, fix",
    [
        ({"type": "int", "low": 16, "high": 256}, None, 256, f"lower search_space.{BATCH}.high"),
        ({"type": "categorical", "choices": [32, 512]}, None, 512, f"drop the larger search_space.{BATCH}.choices"),
        (None, 512, 512, f"lower fixed.{BATCH}"),
    ],
)
def test_batch_larger_than_the_training_images_is_refused(tiny_study, fake_data, entry, fixed, largest, fix):
    spec = batch_study(tiny_study, entry, fixed)
    with pytest.raises(StudyError) as e:
        check_against_data(spec, source="studies/tiny.yaml")
    assert str(e.value) == (
        f"studies/tiny.yaml: optim.batch_size can reach {largest} but a trial has only 180 training images "
        f"(stl10 {fake_data}: STL-10 binaries, 10 classes, 180 train / 20 val / 100 test images); {fix} (at most 180)"
    )


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "int", "low": 16, "high": 180},  # a batch of every training image still makes a step
        {"type": "int", "low": 16, "high": 200, "step": 41},  # draws 16, 57, ..., 180, never 200
        {"type": "int", "low": 8, "high": 128, "log": True},
        {"type": "categorical", "choices": [180, 64]},
    ],
)
def test_batch_that_fits_is_accepted(tiny_study, entry):
    check_against_data(batch_study(tiny_study, entry))


def test_searched_validation_share_counts_at_its_largest(tiny_study):
    tiny_study["search_space"]["data.val_fraction"] = {"type": "float", "low": 0.05, "high": 0.5}
    with pytest.raises(StudyError, match=r"can reach 150 but a trial has only 100 training images .*100 val"):
        check_against_data(batch_study(copy.deepcopy(tiny_study), fixed=150))
    tiny_study["search_space"]["data.val_fraction"]["high"] = 0.2  # leaves 160
    check_against_data(batch_study(tiny_study, fixed=150))


def test_data_dir_of_this_host_is_the_one_checked(tiny_study, tmp_path):
    small = write_fake_stl10(tmp_path / "small", train_per_class=10, test_per_class=1, num_classes=2)
    spec = StudySpec.from_dict(tiny_study)  # batch 32: fits fixed data.dir (180 images)
    check_against_data(spec)
    with pytest.raises(StudyError, match=rf"only 18 training images \(stl10 {small}:"):
        check_against_data(spec, data_dir=small)
    default = batch_study(copy.deepcopy(tiny_study))  # nothing sets optim.batch_size: the default, 64
    with pytest.raises(StudyError, match=r"can reach 64 .*; set a lower one in `fixed` \(at most 18\)$"):
        check_against_data(default, data_dir=small)
    with pytest.raises(DataError, match="not downloaded yet"):  # it never downloads
        check_against_data(spec, data_dir=tmp_path / "elsewhere")


def _class_folders(root, per_class: int = 30) -> None:
    """A class-layout folder dataset of two classes of tiny random PNGs."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


@pytest.mark.usefixtures("image_cache")
def test_run_names_a_corrupt_image_in_one_line_before_any_trial(storage_url, tmp_path, tiny_study):
    import optuna
    import yaml
    from typer.testing import CliRunner

    from stl_tune.cli import app

    root = tmp_path / "pets"
    _class_folders(root)
    bad = root / "dog" / "7.png"
    bad.write_bytes(bad.read_bytes()[:60])  # cut short: the header reads, the pixels do not
    tiny_study["fixed"]["data"]["dir"] = str(root)
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study))
    r = CliRunner().invoke(
        app, ["run", "--study", str(study_file), "--storage", storage_url, "--trials", "2", "--gpus", "none"]
    )
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1 and r.output.startswith(f"error: {bad}: cannot read this image")
    assert optuna.get_all_study_names(storage_url) == []  # no study, so no trial, was made
