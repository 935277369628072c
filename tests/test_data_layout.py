"""Folder datasets in both layouts (root/<class>/ and root/{train,val,test}/<class>/): which images
each split gets, one clear line for every bad tree or file, the cheap counts (train_size,
describe) that decode and download nothing, data.source auto, and prepare() with its decode
cache. Tiny PNG trees written per test."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stl_tune import data
from stl_tune.config import DataConfig
from stl_tune.data import DataError, describe, load_data, prepare, train_size

SIDE = 8  # pixels; files are written at the loaded size, so loaded pixels equal the files' exactly
pytestmark = pytest.mark.usefixtures("image_cache")  # decoded folders are cached under tmp_path


@pytest.fixture(autouse=True)
def fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def write_tree(root: Path, counts: dict[str, dict[str, int]], seed: int = 0) -> dict[str, dict[bytes, str]]:
    """root/<split>/<class>/<i>.png ("" as the split: root/<class>/) of distinct random RGB images.
    Returns {split: {pixels as bytes: class}}, to compare with what was loaded."""
    g = torch.Generator().manual_seed(seed)
    written: dict[str, dict[bytes, str]] = {}
    for split, classes in counts.items():
        written[split] = {}
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, SIDE, SIDE), dtype=torch.uint8, generator=g)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(root / split / name / f"{i}.png")
                written[split][img.numpy().tobytes()] = name
    return written


def loaded(x, y, classes) -> dict[bytes, str]:
    return {img.numpy().tobytes(): classes[int(c)] for img, c in zip(x, y)}


def folder(root: Path, **kw) -> DataConfig:
    return DataConfig(source="folder", dir=str(root), **{"image_size": SIDE, **kw})


# ---------------------------------------------------------------------------------- split layout
def test_split_layout_tests_on_exactly_test_and_carves_val_from_train(tmp_path):
    written = write_tree(tmp_path, {"train": {"cat": 6, "dog": 6, "owl": 6}, "test": {"cat": 2, "dog": 3, "owl": 1}})
    cfg = folder(tmp_path, val_fraction=0.25, test_fraction=0.5)  # test_fraction has no say here
    ds = load_data(cfg, seed=0, with_test=True)
    assert ds.classes == ["cat", "dog", "owl"]
    assert loaded(ds.test_x, ds.test_y, ds.classes) == written["test"]
    train, val = loaded(ds.train_x, ds.train_y, ds.classes), loaded(ds.val_x, ds.val_y, ds.classes)
    assert torch.bincount(ds.val_y).tolist() == [2, 2, 2]  # round(0.25 * 6) per class
    assert not train.keys() & val.keys() and {**train, **val} == written["train"]
    # The carved validation split moves with the seed; the test split is the folder's, always.
    other = load_data(cfg, seed=1, with_test=True)
    assert loaded(other.val_x, other.val_y, ds.classes) != val
    assert torch.equal(other.test_x, ds.test_x)


def test_split_layout_validates_on_val_folder(tmp_path):
    written = write_tree(tmp_path, {"train": {"a": 4, "b": 5}, "val": {"a": 2, "b": 1}, "test": {"a": 1, "b": 2}})
    cfg = folder(tmp_path, val_fraction=0.5)  # not used: val/ is the validation split
    ds = load_data(cfg, seed=0, with_test=True)
    assert loaded(ds.train_x, ds.train_y, ds.classes) == written["train"]
    assert loaded(ds.val_x, ds.val_y, ds.classes) == written["val"]
    assert loaded(ds.test_x, ds.test_y, ds.classes) == written["test"]
    assert torch.equal(load_data(cfg, seed=7).val_x, ds.val_x)
    final = load_data(folder(tmp_path, train_on_val=True), seed=0)  # final training: train/ + val/
    assert loaded(final.train_x, final.train_y, ds.classes) == {**written["train"], **written["val"]}
    assert len(final.val_y) == 0


def test_describe_names_the_layout(tmp_path, fake_data):
    write_tree(tmp_path / "split", {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1}, "test": {"a": 2, "b": 2}})
    write_tree(tmp_path / "carved", {"train": {"a": 4, "b": 4}, "test": {"a": 2, "b": 2}})
    write_tree(tmp_path / "flat", {"": {"a": 5, "b": 5}})
    assert describe(folder(tmp_path / "split")) == (
        f"folder {tmp_path / 'split'}: split layout (train/ val/ test/), 2 classes, 8 train / 2 val / 4 test images"
    )
    assert describe(folder(tmp_path / "carved")) == (  # val_fraction 0.1: at least one image per class
        f"folder {tmp_path / 'carved'}: split layout (train/ test/; val: carved from train/), 2 classes, "
        "6 train / 2 val / 4 test images"
    )
    assert describe(folder(tmp_path / "flat")) == (
        f"folder {tmp_path / 'flat'}: class layout (<class>/; test: 20% of each class, fixed), 2 classes, "
        "6 train / 2 val / 2 test images"
    )
    assert describe(DataConfig(source="stl10", dir=str(fake_data))) == (
        f"stl10 {fake_data}: STL-10 binaries, 10 classes, 180 train / 20 val / 100 test images"
    )
    # data.source auto (the default) names the source it found
    assert describe(DataConfig(dir=str(fake_data))) == describe(DataConfig(source="stl10", dir=str(fake_data)))
    for tree in ("split", "flat"):
        assert describe(DataConfig(dir=str(tmp_path / tree), image_size=SIDE)) == describe(folder(tmp_path / tree))


# ------------------------------------------------------------------------- bad trees, bad files
def test_class_folders_must_agree_across_splits(tmp_path):
    write_tree(tmp_path / "t", {"train": {"cat": 2, "dog": 2}, "test": {"dog": 1, "kat": 1}})
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{tmp_path / 't'}: class folders differ between train/ and test/: test/ lacks 'cat'; test/ has extra 'kat'"
        )
        + "$",
    ):
        load_data(folder(tmp_path / "t"), seed=0)
    write_tree(
        tmp_path / "v", {"train": {"a": 2, "b": 2, "c": 2}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1, "c": 1}}
    )
    with pytest.raises(DataError, match=r"differ between train/ and val/: val/ lacks 'c'$"):
        load_data(folder(tmp_path / "v"), seed=0)


@pytest.mark.parametrize(
    "splits, needle",
    [
        (["train", "val"], "ambiguous folder tree, train/, val/ but no test/: the split layout holds"),
        (["test", "cat"], "ambiguous folder tree, test/ but no train/"),
        (["train", "test", "extra"], "ambiguous folder tree, train/ and test/ beside extra/"),
    ],
)
def test_ambiguous_tree_is_refused(tmp_path, splits, needle):
    write_tree(tmp_path, {s: {"a": 1, "b": 1} for s in splits})
    with pytest.raises(DataError, match=re.escape(needle)):
        load_data(folder(tmp_path), seed=0)


def test_split_without_class_folders(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}})
    (tmp_path / "test").mkdir()
    Image.new("RGB", (SIDE, SIDE)).save(tmp_path / "test" / "loose.png")  # images, but no class folder
    with pytest.raises(
        DataError,
        match=re.escape(f"{tmp_path / 'test'}: a classifier needs at least 2 class sub-folders") + ".*found 0",
    ):
        load_data(folder(tmp_path), seed=0)


def test_empty_class_folder_is_named(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1, "c": 1}})
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train' / 'c'}: empty class folder, no images")):
        load_data(folder(tmp_path), seed=0)


def test_corrupt_image_is_named(tmp_path):
    write_tree(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
    good = (tmp_path / "test" / "a" / "0.png").read_bytes()
    cut = tmp_path / "test" / "a" / "cut.png"
    cut.write_bytes(good[: len(good) // 2])
    load_data(folder(tmp_path), seed=0)  # the search never opens test images
    with pytest.raises(DataError, match=re.escape(f"{cut}: cannot read this image")):
        load_data(folder(tmp_path), seed=0, with_test=True)


def test_grayscale_pngs_become_rgb(tmp_path):
    """8-bit grey ("L") keeps its values; 16-bit grey ("I;16") keeps its high byte rather than
    being clipped to white. Every image comes out with three equal channels."""
    g = np.random.default_rng(0)
    expected: dict[bytes, str] = {}
    for split, per_class in (("train", 3), ("test", 1)):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                grey8 = g.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
                grey16 = g.integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
                Image.fromarray(grey8).save(tmp_path / split / name / f"{i}-8bit.png")
                Image.fromarray(grey16).save(tmp_path / split / name / f"{i}-16bit.png")
                for grey in (grey8, (grey16 >> 8).astype(np.uint8)):
                    expected[np.repeat(grey[None], 3, axis=0).tobytes()] = name
    with Image.open(tmp_path / "train" / "a" / "0-16bit.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit grey file
    ds = load_data(folder(tmp_path, train_on_val=True), seed=0, with_test=True)
    got = {**loaded(ds.train_x, ds.train_y, ds.classes), **loaded(ds.test_x, ds.test_y, ds.classes)}
    assert got == expected


# ------------------------------------------------------------------------------- cheap counting
@pytest.mark.parametrize(
    "tree, kw",
    [
        ("stl10", {}),
        ("stl10", {"val_fraction": 0.33}),
        ("stl10", {"train_on_val": True}),
        ("flat", {"val_fraction": 0.3, "test_fraction": 0.25}),
        ("carved", {"val_fraction": 0.2}),
        ("val", {}),
        ("val", {"train_on_val": True}),
    ],
)
def test_train_size_is_what_the_trainer_trains_on(tmp_path, fake_data, tree, kw):
    trees = {  # uneven class sizes, so per-class rounding matters
        "flat": {"": {"a": 7, "b": 4, "c": 9}},
        "carved": {"train": {"a": 7, "b": 4, "c": 9}, "test": {"a": 1, "b": 1, "c": 1}},
        "val": {"train": {"a": 7, "b": 4}, "val": {"a": 2, "b": 3}, "test": {"a": 1, "b": 1}},
    }
    if tree == "stl10":
        cfg = DataConfig(dir=str(fake_data), image_size=16, **kw)
    else:
        write_tree(tmp_path, trees[tree])
        cfg = folder(tmp_path, **kw)
    assert train_size(cfg) == len(load_data(cfg, seed=3).train_y)


def test_train_size_decodes_and_downloads_nothing(tmp_path, fake_data, monkeypatch):
    write_tree(tmp_path / "f", {"train": {"a": 5, "b": 5}, "test": {"a": 1, "b": 1}})

    def forbidden(*args, **kwargs):
        raise AssertionError("train_size must not read images or download")

    for module, name in (
        (data.decode, "_decode"),
        (data.stl10, "read_stl10_split"),
        (data.stl10, "download_and_extract_archive"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    assert train_size(folder(tmp_path / "f")) == 8
    assert train_size(DataConfig(dir=str(fake_data))) == 180
    with pytest.raises(DataError, match=r"train_y.bin not found: STL-10 is not downloaded yet"):
        train_size(DataConfig(dir=str(tmp_path / "nothing")))
    assert not (tmp_path / "nothing").exists()


# ------------------------------------------------------------------------------- data.source auto
def test_auto_finds_the_source_from_the_tree(tmp_path, fake_data, no_download):
    write_tree(tmp_path / "flat", {"": {"a": 5, "b": 5}})
    write_tree(tmp_path / "split", {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    (tmp_path / "demo" / "fake" / "stl10_binary").mkdir(parents=True)  # data/ after `data fake --out data/fake`
    auto = {name: DataConfig(dir=str(tmp_path / name), image_size=SIDE) for name in ("flat", "split")}
    for name, cfg in auto.items():  # a folder dataset, read exactly as with data.source folder
        ds = load_data(cfg, seed=0, with_test=True)
        explicit = load_data(folder(tmp_path / name), seed=0, with_test=True)
        assert torch.equal(ds.train_x, explicit.train_x) and torch.equal(ds.test_y, explicit.test_y)
    assert len(load_data(DataConfig(dir=str(fake_data), image_size=SIDE), seed=0).train_y) == 180  # stl10_binary/
    # nothing there yet, or folders without files: STL-10, downloaded into data.dir (offline here)
    for where in (tmp_path / "nothing", tmp_path / "demo"):
        with pytest.raises(DataError, match=re.escape(f"STL-10 is not in {where / 'stl10_binary'}")):
            load_data(DataConfig(dir=str(where)), seed=0)
    assert len(no_download) == 2


def test_auto_refuses_what_it_cannot_place(tmp_path, fake_data):
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (SIDE, SIDE)).save(loose / "a.png")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{loose}: 1 images but no class sub-folders: a folder dataset holds {loose}/<class name>/<image files>"
        ),
    ):
        describe(DataConfig(dir=str(loose)))
    inner = fake_data / "stl10_binary"
    with pytest.raises(
        DataError,
        match=re.escape(f"{inner} holds the STL-10 files themselves: set data.dir to the folder above it, {fake_data}"),
    ):
        describe(DataConfig(dir=str(inner)))


# ------------------------------------------------------------------------ what is and is not an image
def test_every_format_pil_reads_is_an_image_and_other_files_are_counted(tmp_path):
    written = write_tree(tmp_path, {"": {"a": 3, "b": 3}})[""]
    tif = torch.randint(0, 256, (3, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(9))
    Image.fromarray(tif.permute(1, 2, 0).numpy()).save(tmp_path / "a" / "scan.TIF")  # TIFF, read by PIL
    written[tif.numpy().tobytes()] = "a"
    for junk in ("notes.txt", ".DS_Store", "Thumbs.db"):
        (tmp_path / "b" / junk).write_text("not an image")
    cfg = folder(tmp_path, train_on_val=True, test_fraction=0.3)
    ds = load_data(cfg, seed=0, with_test=True)
    got = {**loaded(ds.train_x, ds.train_y, ds.classes), **loaded(ds.test_x, ds.test_y, ds.classes)}
    assert got == written
    assert describe(cfg).endswith("; skipped 3 files that are not images: .DS_Store, Thumbs.db, notes.txt")


def test_a_class_of_unreadable_format_names_it_and_how_to_convert(tmp_path):
    write_tree(tmp_path, {"": {"a": 2, "b": 2}})
    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.heic").write_bytes(b"ftypheic")
    (tmp_path / "c" / ".DS_Store").write_bytes(b"")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{tmp_path / 'c'}: no image file PIL can read, its files are "
            "3 .heic: convert them to PNG or JPEG (ImageMagick: mogrify "
            "-format png *.heic)"
        ),
    ):
        describe(folder(tmp_path))


def test_class_layout_needs_a_test_share_and_the_split_layout_does_not(tmp_path):
    write_tree(tmp_path / "flat", {"": {"a": 4, "b": 4}})
    write_tree(tmp_path / "split", {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match=r"flat: data.test_fraction must be > 0 for a class-layout folder"):
        train_size(folder(tmp_path / "flat", test_fraction=0.0))
    assert train_size(folder(tmp_path / "split", test_fraction=0.0)) == 6


# ------------------------------------------------------------------------ prepare and its decode cache
def test_prepare_names_every_unreadable_file_before_any_training(tmp_path):
    write_tree(tmp_path, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    (tmp_path / "test" / "b" / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n half a file")  # a test image
    load_data(folder(tmp_path), seed=0)  # a search's trials read no test image: they would not notice
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'test' / 'b' / 'cut.png'}: cannot read this image")):
        prepare(folder(tmp_path))
    (tmp_path / "train" / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "b" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as e:
        prepare(folder(tmp_path))
    assert str(e.value).startswith(f"{tmp_path / 'train' / 'a' / 'empty.jpg'}: cannot read this image")
    assert str(e.value).endswith("(and 1 more file that cannot be read); remove or replace them")
    assert "\n" not in str(e.value)


def test_prepare_decodes_once_and_the_next_process_reads_the_cache(tmp_path, image_cache, monkeypatch):
    root = tmp_path / "pets"
    write_tree(root, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}})
    cfg = folder(root, train_on_val=True)
    line = prepare(cfg)
    assert line == describe(cfg)
    assert len(list(image_cache.glob("*.pt"))) == 2  # train/ and test/, outside the dataset
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == sorted(f"{i}.png" for i in [0, 1, 2] * 2 + [0] * 2)
    expected = load_data(cfg, seed=0, with_test=True)

    def forbidden(f):
        raise AssertionError(f"decoded {f} again")

    data.clear_cache()  # as a new process, e.g. a search's worker
    monkeypatch.setattr(data.decode, "_decode", forbidden)
    again = load_data(cfg, seed=0, with_test=True)
    assert torch.equal(again.train_x, expected.train_x) and torch.equal(again.test_x, expected.test_x)
    prepare(cfg)

    # an image changed in place (new pixels and mtime) is decoded again; the stale entry goes
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(image_cache.parent.parent))
    Image.new("RGB", (SIDE, SIDE), (255, 0, 0)).save(root / "train" / "a" / "0.png")
    data.clear_cache()
    changed = load_data(cfg, seed=0)
    red = torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None].expand(3, SIDE, SIDE)
    assert any(torch.equal(img, red) for img in changed.train_x)
    assert len(list(image_cache.glob("*.pt"))) == 2


def test_a_cache_that_cannot_be_written_only_costs_decoding(tmp_path, monkeypatch):
    write_tree(tmp_path / "d", {"": {"a": 3, "b": 3}})
    (tmp_path / "not-a-folder").write_text("XDG_CACHE_HOME names a file: nothing can be written under it")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    prepare(folder(tmp_path / "d"))
    assert len(load_data(folder(tmp_path / "d"), seed=0, with_test=True).test_y) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "not-a-folder"]


def test_a_cache_write_cut_short_leaves_no_file(tmp_path, image_cache, monkeypatch):
    write_tree(tmp_path / "d", {"": {"a": 3, "b": 3}})

    def disk_full(obj, f):
        f.write(b"half a tensor file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.decode.torch, "save", disk_full)
    prepare(folder(tmp_path / "d"))  # decoded all the same
    assert list(image_cache.iterdir()) == []  # neither a half file under the final name nor a temporary one


def test_many_images_decode_under_a_progress_bar(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from stl_tune import progress

    write_tree(tmp_path, {"train": {"a": 4, "b": 4}, "test": {"a": 1, "b": 1}})
    monkeypatch.setattr(progress, "IMAGE_PROGRESS_MIN", 5)  # "many": train/'s 8, not test/'s 2
    screen = io.StringIO()
    prepare(folder(tmp_path), Console(file=screen, width=100))
    assert "decoding train/ 8/8" in screen.getvalue() and "test/" not in screen.getvalue()
    screen.truncate(0)
    prepare(folder(tmp_path), Console(file=screen, width=100))  # read from the cache: nothing to show
    assert screen.getvalue() == ""
