"""The loaded dataset (stl_tune.data.load_data): one copy of the labelled images per data source and
device, shared by every seed and split, each split an index tensor into it."""

import pytest
import torch

from stl_tune import data
from stl_tune.config import DataConfig
from stl_tune.data import load_data, write_fake_stl10


@pytest.fixture(autouse=True)
def fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_stl10(tmp_path_factory.mktemp("fake"), train_per_class=10, test_per_class=2)


def test_seeds_and_splits_share_one_copy_of_the_images(fake):
    """confirm alternates seeds, each with its own validation split: a worker keeps one copy."""
    cfg = DataConfig(dir=str(fake), image_size=16)
    a, b = load_data(cfg, seed=0), load_data(cfg, seed=1)
    final = load_data(DataConfig(dir=str(fake), image_size=16, train_on_val=True), seed=0, with_test=True)
    wider = load_data(DataConfig(dir=str(fake), image_size=16, val_fraction=0.3), seed=0)
    assert a is not b and a.images is b.images is final.images is wider.images
    assert a.labels is b.labels is final.labels
    assert not torch.equal(a.val, b.val) and len(wider.val) == 30  # 30 % of 10 per class
    for ds in (a, b, wider):  # each split: the labelled images, disjoint, complete, gathered by index
        assert torch.equal(torch.cat([ds.train, ds.val]).sort().values, torch.arange(100))
        assert torch.equal(ds.val_x, ds.images[ds.val]) and torch.equal(ds.train_y, ds.labels[ds.train])
    assert torch.equal(final.train, torch.arange(100)) and len(final.val) == 0
    assert final.test_x.shape == (20, 3, 16, 16)
    assert load_data(cfg, seed=0, with_test=True).test_x is final.test_x  # test images: one copy too
    other_size = load_data(DataConfig(dir=str(fake), image_size=24), seed=0)
    assert other_size.images.shape[-1] == 24  # another size is another source


@pytest.mark.cuda
def test_cuda_and_cuda0_share_one_copy_on_the_gpu(fake):
    cfg = DataConfig(dir=str(fake), image_size=16)
    a, b = load_data(cfg, seed=0, device="cuda"), load_data(cfg, seed=1, device="cuda:0")
    assert a.images is b.images and a.images.is_cuda and a.train.is_cuda
    assert torch.equal(a.images.cpu(), load_data(cfg, seed=0).images)
