"""stl_tune/data/: STL-10 binary layout, checks, download fallback, folder datasets, splits, cache,
and the fake-data writer. No network: the downloader is monkeypatched wherever files are missing."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import STL10

from stl_tune import data
from stl_tune.config import DataConfig
from stl_tune.data import DataError, load_data, read_stl10_split, write_fake_stl10

PER_CLASS, TEST_PER_CLASS = 20, 5  # the shared fake set: 200 train, 50 test images
pytestmark = pytest.mark.usefixtures("image_cache")  # decoded folders are cached under a tmp folder


@pytest.fixture(autouse=True)
def fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    return write_fake_stl10(tmp_path_factory.mktemp("fake"), PER_CLASS, TEST_PER_CLASS, seed=0)


def cfg(fake: Path, **kw) -> DataConfig:
    return DataConfig(dir=str(fake), **{"image_size": 16, **kw})


# ------------------------------------------------------------------------------- binary layout
def test_reader_matches_torchvision_stl10(fake, monkeypatch):
    # torchvision's own STL10 reader is the reference for the layout; skip its md5 check (fake files).
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    for split in ("train", "test"):
        x, y = read_stl10_split(fake, split)
        ref = STL10(str(fake), split=split)
        assert x.dtype == torch.uint8 and x.shape == (len(ref.labels), 3, 96, 96)
        assert torch.equal(x, torch.from_numpy(ref.data))
        assert torch.equal(y, torch.from_numpy(ref.labels).long())
    assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9


def test_column_major_orientation(tmp_path):
    img = np.zeros((3, 96, 96), np.uint8)
    img[0, 0, :] = 255  # red top row
    img[2, :, 5] = 128  # blue column 5
    img[1, 10, 20] = 7  # one green pixel at row 10, column 20
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    # Written the way the STL-10 files are: each channel column by column.
    (folder / "train_X.bin").write_bytes(b"".join(c.tobytes(order="F") for c in img))
    (folder / "train_y.bin").write_bytes(bytes([3]))
    x, y = read_stl10_split(tmp_path, "train")
    assert torch.equal(x[0], torch.from_numpy(img)) and y.tolist() == [2]
    data.stl10.write_split(tmp_path, "test", x, y)  # the writer is the exact inverse
    assert (folder / "test_X.bin").read_bytes() == (folder / "train_X.bin").read_bytes()
    assert (folder / "test_y.bin").read_bytes() == bytes([3])


@pytest.fixture
def copy(fake, tmp_path) -> Path:
    """A private copy of the fake set to corrupt."""
    (tmp_path / "stl10_binary").mkdir()
    for f in (fake / "stl10_binary").iterdir():
        (tmp_path / "stl10_binary" / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_truncated_images_name_the_file(copy):
    x_file = copy / "stl10_binary" / "train_X.bin"
    x_file.write_bytes(x_file.read_bytes()[:-100])
    with pytest.raises(DataError, match="train_X.bin"):
        load_data(cfg(copy), seed=0)


def test_label_count_mismatch_names_the_file(copy):
    y_file = copy / "stl10_binary" / "train_y.bin"
    y_file.write_bytes(y_file.read_bytes()[:-1])
    with pytest.raises(DataError, match="train_y.bin"):
        load_data(cfg(copy), seed=0)


@pytest.mark.parametrize("bad", [0, 11])
def test_labels_out_of_range(copy, bad):
    y_file = copy / "stl10_binary" / "train_y.bin"
    y_file.write_bytes(bytes([bad]) + y_file.read_bytes()[1:])
    with pytest.raises(DataError, match="train_y.bin.*1..10"):
        load_data(cfg(copy), seed=0)


def test_too_few_class_names(copy):
    (copy / "stl10_binary" / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="class_names.txt"):
        load_data(cfg(copy), seed=0)


def test_default_class_names_without_file(copy):
    (copy / "stl10_binary" / "class_names.txt").unlink()
    assert load_data(cfg(copy), seed=0).classes == data.STL10_CLASSES


# ------------------------------------------------------------------------------------- download
def test_missing_files_offline_is_one_clear_error(tmp_path, no_download):
    with pytest.raises(DataError) as e:
        load_data(cfg(tmp_path / "nowhere"), seed=0)
    msg = str(e.value)
    assert no_download == [STL10.url]
    assert str(tmp_path / "nowhere" / "stl10_binary") in msg and STL10.url in msg
    for name in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        assert name in msg
    assert "\n" not in msg  # the CLI prints it as one line
    assert list((tmp_path / "nowhere").iterdir()) == []  # no half-written files left behind


def test_offline_error_names_the_missing_file(fake, tmp_path, no_download):
    partial = tmp_path / "partial"
    shutil.copytree(fake, partial)
    (partial / "stl10_binary" / "test_y.bin").unlink()
    with pytest.raises(DataError, match=r"\(missing test_y.bin\)"):
        load_data(cfg(partial), seed=0, with_test=True)


def test_constant_channels_do_not_divide_by_zero():
    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    x[:, 0] = torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8)  # only red varies
    mean, std = data.channel_stats(x)
    assert mean[1] == mean[2] == 0.0 and std[1] == std[2] == 1 / 255 and std[0] > 0.2


def test_missing_files_are_downloaded(tmp_path, monkeypatch):
    def fake_download(url, download_root, filename, md5, remove_finished):
        assert (url, md5) == (STL10.url, STL10.tgz_md5)  # torchvision checks the archive
        write_fake_stl10(download_root, train_per_class=2, test_per_class=1)

    monkeypatch.setattr(data.stl10, "download_and_extract_archive", fake_download)
    ds = load_data(cfg(tmp_path), seed=0, with_test=True)
    assert len(ds.train_y) + len(ds.val_y) == 20 and len(ds.test_y) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["stl10_binary"]  # temp folder cleaned up


def test_ensure_downloaded_fetches_only_what_is_missing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(data.stl10, "download", lambda root: calls.append(root))
    write_fake_stl10(tmp_path / "have", train_per_class=1, test_per_class=1)
    data.ensure_downloaded(cfg(tmp_path / "have"))
    data.ensure_downloaded(DataConfig("folder", str(tmp_path / "anything")))
    assert calls == []
    (tmp_path / "have" / "stl10_binary" / "test_y.bin").unlink()
    data.ensure_downloaded(cfg(tmp_path / "have"))
    assert calls == [tmp_path / "have"]


# ---------------------------------------------------------------------------------------- splits
def test_split_is_stratified_disjoint_and_complete(fake):
    ds = load_data(cfg(fake, val_fraction=0.1), seed=0)
    assert torch.bincount(ds.val_y).tolist() == [2] * 10  # 10 % of 20 per class
    assert torch.bincount(ds.train_y).tolist() == [18] * 10
    # Disjoint and complete: together the images are exactly the labelled training set (the noise
    # makes every fake image unique, so images can be compared as sets of byte strings).
    x = data.decode.resize(read_stl10_split(fake, "train")[0], 16)
    train, val, full = ({bytes(img.numpy()) for img in t} for t in (ds.train_x, ds.val_x, x))
    assert len(full) == len(x) and not train & val and train | val == full


def test_split_depends_on_seed_only(fake):
    a = load_data(cfg(fake), seed=0)
    data.clear_cache()
    b = load_data(cfg(fake), seed=0)
    c = load_data(cfg(fake), seed=1)
    assert a is not b and torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)


def test_train_on_val_merges(fake):
    ds = load_data(cfg(fake, train_on_val=True), seed=0)
    assert len(ds.train_y) == 10 * PER_CLASS and len(ds.val_y) == 0
    assert ds.val_x.shape == (0, 3, 16, 16)


def test_test_split_only_when_asked(fake):
    ds = load_data(cfg(fake), seed=0)
    assert ds.test_x is None and ds.test_y is None
    ds = load_data(cfg(fake), seed=0, with_test=True)
    assert ds.test_x.shape == (10 * TEST_PER_CLASS, 3, 16, 16)
    assert torch.bincount(ds.test_y).tolist() == [TEST_PER_CLASS] * 10


def test_tensors_sizes_and_stats(fake):
    ds = load_data(cfg(fake, image_size=24), seed=0, device=torch.device("cpu"))
    assert ds.train_x.shape[1:] == (3, 24, 24) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.dtype == torch.int64 and ds.val_y.dtype == torch.int64
    assert ds.num_classes == 10 and ds.classes[0].startswith("stripes")
    x = ds.train_x.double() / 255
    assert np.allclose(ds.mean, x.mean((0, 2, 3)).tolist())
    assert np.allclose(ds.std, x.std((0, 2, 3), correction=0).tolist())
    # Resizing averages pixels (antialias), it does not pick every 4th one.
    full = load_data(cfg(fake, image_size=96), seed=0)
    assert full.train_x.shape[1:] == (3, 96, 96)
    assert np.allclose(full.mean, ds.mean, atol=0.01)


def test_cache_returns_the_same_tensors(fake, monkeypatch):
    a = load_data(cfg(fake), seed=0)
    monkeypatch.chdir(fake.parent)  # a relative path to the same folder shares the cache entry
    b = load_data(DataConfig(dir=fake.name, image_size=16), seed=0, device="cpu")
    assert b is a and b.images is a.images
    data.clear_cache()
    assert load_data(cfg(fake), seed=0).images is not a.images


def test_seeds_and_splits_share_one_copy_of_the_images(fake):
    """confirm alternates seeds, each with its own validation split: a worker keeps one copy."""
    a, b = load_data(cfg(fake), seed=0), load_data(cfg(fake), seed=1)
    final = load_data(cfg(fake, train_on_val=True), seed=0, with_test=True)
    wider = load_data(cfg(fake, val_fraction=0.3), seed=0)
    assert a is not b and a.images is b.images is final.images is wider.images
    assert a.labels is b.labels is final.labels
    assert not torch.equal(a.val, b.val) and len(wider.val) == 60  # 30 % of 20 per class
    for ds in (a, b, wider):  # each split: the labelled images, disjoint, complete, gathered by index
        assert torch.equal(torch.cat([ds.train, ds.val]).sort().values, torch.arange(10 * PER_CLASS))
        assert torch.equal(ds.val_x, ds.images[ds.val]) and torch.equal(ds.train_y, ds.labels[ds.train])
    assert torch.equal(final.train, torch.arange(10 * PER_CLASS)) and len(final.val) == 0
    assert load_data(cfg(fake), seed=0, with_test=True).test_x is final.test_x  # test images: one copy too
    assert load_data(cfg(fake, image_size=24), seed=0).images.shape[-1] == 24  # another size, another source


@pytest.mark.cuda
def test_cuda_and_cuda0_share_one_copy_on_the_gpu(fake):
    a, b = load_data(cfg(fake), seed=0, device="cuda"), load_data(cfg(fake), seed=1, device="cuda:0")
    assert a.images is b.images and a.images.is_cuda and a.train.is_cuda
    assert torch.equal(a.images.cpu(), load_data(cfg(fake), seed=0).images)


# ------------------------------------------------------------------------------ folder datasets
def _image(h, w, value, channels=3):
    g = torch.Generator().manual_seed(value)
    return torch.randint(0, 256, (channels, h, w), dtype=torch.uint8, generator=g)


def _save(img, path):
    array = img.permute(1, 2, 0).squeeze(2).numpy()  # HWC, or HW for one channel
    Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path) -> Path:
    """3 classes x 5 small images of assorted sizes, formats and channel counts."""
    root = tmp_path / "flowers"
    for c, name in enumerate(["rose", "daisy", "tulip"]):
        (root / name).mkdir(parents=True)
        for i in range(5):
            _save(_image(20 + i, 30 - i, 10 * c + i), root / name / f"{i}.png")
        (root / name / "notes.txt").write_text("not an image, ignored")
    _save(_image(12, 12, 99, channels=1), root / "rose" / "gray.png")  # read as RGB
    _save(_image(40, 24, 98), root / "tulip" / "photo.JPG")
    return root


def test_folder_dataset(folder):
    c = DataConfig("folder", str(folder), image_size=16, val_fraction=0.25, test_fraction=0.2)
    ds = load_data(c, seed=0, with_test=True)
    assert ds.classes == ["daisy", "rose", "tulip"]  # sorted folder names
    counts = {"daisy": 5, "rose": 6, "tulip": 6}
    test = torch.bincount(ds.test_y, minlength=3).tolist()
    val = torch.bincount(ds.val_y, minlength=3).tolist()
    train = torch.bincount(ds.train_y, minlength=3).tolist()
    assert test == [1, 1, 1]  # round(0.2 * 5 or 6) per class
    assert val == [1, 1, 1]  # round(0.25 * 4 or 5)
    assert [a + b + t for a, b, t in zip(train, val, test)] == list(counts.values())
    assert ds.train_x.shape[1:] == ds.test_x.shape[1:] == (3, 16, 16)
    # The test split is fixed for the folder; only the validation split moves with the seed.
    data.clear_cache()
    other = load_data(c, seed=5, with_test=True)
    assert torch.equal(other.test_x, ds.test_x)


def test_folder_errors(tmp_path):
    def load(path):
        data.clear_cache()
        load_data(DataConfig(source="folder", dir=str(path), image_size=16), seed=0)

    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="at least 2 class sub-folders .*found 0"):
        load(tmp_path / "empty")
    (tmp_path / "ds" / "cats").mkdir(parents=True)
    with pytest.raises(DataError, match="at least 2 class sub-folders .*found 1"):
        load(tmp_path / "ds")
    (tmp_path / "ds" / "dogs").mkdir()
    with pytest.raises(DataError, match=r"cats: empty class folder, no images"):
        load(tmp_path / "ds")
    (tmp_path / "ds" / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    _save(_image(8, 8, 0), tmp_path / "ds" / "dogs" / "fine.png")
    with pytest.raises(DataError, match="broken.png"):
        load(tmp_path / "ds")


# ------------------------------------------------------------------------------------- fake data
def test_fake_classes_are_learnable_but_not_trivial(tmp_path):
    """Nearest-class-mean on two cues: texture (phase-free |FFT| per channel) and colour (channel
    means). Each beats chance (10 %) clearly; neither is perfect. Measured over writer seeds 0-7 at
    this size: texture 0.50-0.68, colour 0.25-0.41 (standard error ~0.035 on 200 test images)."""
    write_fake_stl10(tmp_path, train_per_class=40, test_per_class=20, seed=3)
    ds = load_data(cfg(tmp_path, image_size=16), seed=0, with_test=True)

    def ncm_acc(features) -> float:
        f_train, f_test = features(ds.train_x), features(ds.test_x)
        means = torch.stack([f_train[ds.train_y == c].mean(0) for c in range(10)])
        return (torch.cdist(f_test, means).argmin(1) == ds.test_y).float().mean().item()

    texture = ncm_acc(lambda x: torch.fft.fft2(x.float() / 255).abs().flatten(1))
    colour = ncm_acc(lambda x: x.float().mean((2, 3)) / 255)
    assert 0.35 < texture < 0.9
    assert 0.15 < colour < 0.6


def test_fake_writer_sizes(tmp_path):
    write_fake_stl10(tmp_path, train_per_class=3, test_per_class=2, num_classes=4)
    x, y = read_stl10_split(tmp_path, "train")
    assert x.shape == (12, 3, 96, 96) and torch.bincount(y).tolist() == [3, 3, 3, 3]
    assert len(read_stl10_split(tmp_path, "test")[1]) == 8
    names = (tmp_path / "stl10_binary" / "class_names.txt").read_text().split()
    assert len(names) == len(set(names)) == 4
    assert x.float().std() > 20  # not blank: textured, noisy images (pixel std in 0..255 units)
