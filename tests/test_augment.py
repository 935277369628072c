import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from stl_tune.augment import (
    OPS,
    apply_ops,
    augment_images,
    draw_ops,
    make_mixer,
    mixing_active,
)
from stl_tune.config import AugmentConfig

PLAIN = dict(crop_padding=0, flip=False, randaugment_ops=0)  # every per-image augmentation off
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def images(n: int, h: int = 16, w: int = 20, seed: int = 0) -> torch.Tensor:
    """Random uint8 images [n, 3, h, w]; h != w catches swapped axes."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def same_image(n: int, h: int = 16, w: int = 20) -> torch.Tensor:
    return images(1, h, w).expand(n, -1, -1, -1).contiguous()


# --------------------------------------------------------------------------- the pipeline
def test_output_shape_dtype_range():
    x = images(8)
    out = augment_images(x, AugmentConfig(crop_padding=4))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_everything_off_is_identity():
    x = images(4)
    assert torch.equal(augment_images(x, AugmentConfig(**PLAIN)), x.float() / 255)


def test_crop_is_a_true_crop_with_per_image_offsets():
    pad, n = 4, 64
    x = same_image(n)
    out = augment_images(x, AugmentConfig(**{**PLAIN, "crop_padding": pad}))
    padded = torch.nn.functional.pad(x[:1].float() / 255, [pad] * 4, mode="reflect")[0]
    h, w = x.shape[-2:]
    windows = {(dy, dx): padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}
    found = []
    for img in out:
        matches = [off for off, win in windows.items() if torch.equal(img, win)]
        assert matches, "an output is not a crop of the reflect-padded image"
        found.append(matches[0])
    assert len(set(found)) > 10  # 81 possible offsets, 64 images: offsets are drawn per image


def test_flip_about_half_per_image():
    n = 2000
    x = same_image(n, 8, 8)
    out = augment_images(x, AugmentConfig(**{**PLAIN, "flip": True}))
    flipped = (out == x.flip(-1).float() / 255).flatten(1).all(1)
    kept = (out == x.float() / 255).flatten(1).all(1)
    assert (flipped | kept).all()
    assert 850 < int(flipped.sum()) < 1150  # Binomial(2000, 0.5): mean 1000, sd 22


def test_randaugment_draws_per_image():
    out = augment_images(same_image(64), AugmentConfig(**{**PLAIN, "randaugment_ops": 2}))
    assert len(torch.unique(out.flatten(1), dim=0)) > 32


def test_seeded_reproducible():
    x = images(16)
    cfg = AugmentConfig(crop_padding=4)

    def run(seed):
        torch.manual_seed(seed)
        return augment_images(x, cfg)

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# ------------------------------------------------------------------------------- RandAugment
def test_op_draws_uniform_and_signs():
    torch.manual_seed(0)
    ops, negative = draw_ops(7000, 2, "cpu")
    assert ops.shape == negative.shape == (2, 7000)
    counts = torch.bincount(ops.flatten(), minlength=len(OPS))
    assert len(counts) == len(OPS)
    assert ((counts > 800) & (counts < 1200)).all()  # 1000 expected per op
    for k, name in enumerate(OPS):
        share = negative[ops == k].float().mean()
        assert (0.4 < share < 0.6) if name in SIGNED else share == 0


def test_magnitude_zero_signed_ops_are_identity():
    names = ["Identity", *sorted(SIGNED)]
    ops = torch.tensor([[OPS.index(name) for name in names for _ in range(2)]])
    negative = torch.tensor([[False, True] * len(names)])
    x = images(ops.shape[1])
    assert torch.equal(apply_ops(x, ops, negative, magnitude=0), x)


@pytest.mark.parametrize("magnitude, h, w", [(9, 16, 20), (30, 24, 24), (17, 11, 13)])
def test_grouped_ops_match_torchvision_per_image(magnitude, h, w):
    """Two rounds of (op, sign) groups, interleaved in one batch, equal the public
    v2.RandAugment(num_ops=2) applied to each image alone, exactly (our geometric ops run as cached
    pixel maps, Sharpness with a cached kernel). The ops and signs v2.RandAugment picks under a
    seed are read off by replaying its draws: per op torch.randint(len(OPS), ()), then for a
    signed op torch.rand(()) <= 0.5."""
    reference = v2.RandAugment(num_ops=2, magnitude=magnitude)
    x = images(80, h, w)
    draws, expected = [], []
    for seed in range(len(x)):
        torch.manual_seed(seed)
        for _ in range(2):
            op = int(torch.randint(len(OPS), ()))
            draws.append((op, OPS[op] in SIGNED and bool(torch.rand(()) <= 0.5)))
        torch.manual_seed(seed)
        expected.append(reference(x[seed]))
    ops, negative = (torch.tensor(d).view(len(x), 2).T for d in zip(*draws))  # [rounds, images]
    seen = {(int(o), bool(n)) for o, n in zip(ops.flatten(), negative.flatten())}
    assert len(seen) >= 20  # most of the 23 groups occur, several images each, interleaved
    out = apply_ops(x, ops, negative, magnitude)
    for i in range(len(x)):
        names = [(OPS[o], bool(n)) for o, n in zip(ops[:, i], negative[:, i])]
        assert torch.equal(out[i], expected[i]), f"image {i}: (op, negative) {names}"


def test_every_convolution_sees_one_shape(monkeypatch):
    """cudnn.benchmark times a convolution's algorithms per input shape: the Sharpness convolution
    saw as many images as drew Sharpness, so it was timed again in every augmentation call."""
    shapes, real = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, *args, **kw: shapes.append(tuple(x.shape)) or real(x, *args, **kw))
    sharpness = OPS.index("Sharpness")
    for n, k in ((40, 1), (40, 33), (90, 70)):  # k of n images draw Sharpness, each sign
        ops = torch.full((1, n), OPS.index("Identity")).index_fill_(1, torch.arange(k), sharpness)
        negative = torch.arange(n)[None] % 2 == 1
        x = images(n)
        out = apply_ops(x, ops, negative, magnitude=9)
        assert not torch.equal(out[:k], x[:k]) and torch.equal(out[k:], x[k:])
    augment_images(images(300), AugmentConfig())
    assert len(shapes) > 8 and len(set(shapes)) == 1, set(shapes)


# --------------------------------------------------------------------------- Mixup / CutMix
def test_mixing_active_for_the_first_k_epochs():
    cfg = AugmentConfig(mix_epochs=3)
    assert [mixing_active(e, cfg) for e in range(5)] == [True, True, True, False, False]
    off = AugmentConfig(mix_epochs=3, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert not any(mixing_active(e, off) for e in range(5))


def test_no_mixing_gives_one_hot_targets():
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    out, t = make_mixer(10, AugmentConfig(mixup_alpha=0.0, cutmix_alpha=0.0))(x, y)
    assert torch.equal(out, x)
    assert t.dtype == torch.float32 and torch.equal(t, torch.eye(10)[y])


def mixed(cfg: AugmentConfig, seed: int):
    """A batch whose neighbours differ in label, mixed; returns x, y, out, targets."""
    torch.manual_seed(seed)
    x, y = torch.rand(8, 3, 8, 12), torch.arange(8) % 5  # y[i] != y[i - 1]
    out, t = make_mixer(5, cfg)(x, y)
    assert out.shape == x.shape and t.shape == (8, 5) and t.dtype == torch.float32
    assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(8))
    return x, y, out, t


@pytest.mark.parametrize("cfg", [AugmentConfig(cutmix_alpha=0.0), AugmentConfig(cutmix_prob=0.0)], ids=["only", "p=0"])
def test_mixup_is_a_convex_combination(cfg):
    for seed in range(3):
        x, y, out, t = mixed(cfg, seed)
        lam = t[torch.arange(8), y]  # weight of each image's own label
        assert torch.allclose(lam, lam[0].expand(8)) and 0 <= lam[0] <= 1
        assert torch.allclose(t[torch.arange(8), y.roll(1)], 1 - lam)
        assert torch.allclose(out, lam[0] * x + (1 - lam[0]) * x.roll(1, 0), atol=1e-6)


@pytest.mark.parametrize("cfg", [AugmentConfig(mixup_alpha=0.0), AugmentConfig(cutmix_prob=1.0)], ids=["only", "p=1"])
def test_cutmix_pastes_a_patch(cfg):
    areas = []
    for seed in range(5):
        x, y, out, t = mixed(cfg, seed)
        own, other = out == x, out == x.roll(1, 0)
        assert (own | other).all()
        patch = other[0, 0] & ~own[0, 0]  # the pasted box, the same for every image and channel
        assert torch.equal((other & ~own).any(1), patch.expand(8, -1, -1))
        rows, cols = patch.any(1).nonzero(), patch.any(0).nonzero()
        if len(rows):
            box = patch[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # a rectangle
        area = patch.float().mean()
        assert torch.allclose(t[torch.arange(8), y.roll(1)], area.expand(8))
        areas.append(float(area))
    assert max(areas) > 0
