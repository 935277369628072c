"""On-device batched augmentation: padded random crop, flip, RandAugment per sample, Mixup/CutMix.

Why our own module: torchvision's v2 transforms, given a batch tensor, draw ONE crop offset, ONE
flip and ONE RandAugment op for the whole batch. Per-image draws would need a Python loop over
images (a DataLoader of PIL transforms), which starves a GPU. Here every image draws its own crop,
flip and ops, and the work runs as a few batched tensor ops on the images' device. The RandAugment
op table and kernels are torchvision's own (the geometric ones turned into cached pixel maps, see
_kernels), so the results equal v2.RandAugment's image by image (tests/test_augment.py).

One augmentation call holds one host sync (apply_ops); the tables it needs are built once per
device, magnitude and image size and kept on the device (tests/test_syncs.py counts both).

Randomness comes from torch's global RNG of the images' device (torch.rand(..., device=x.device)),
so a seeded run is reproducible and a resumed one continues the same stream once the trainer
restores the RNG states. Mixup/CutMix (torchvision's) draw from the CPU RNG.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import v2

from stl_tune.config import AugmentConfig


# --------------------------------------------------------------------------- crop and flip
def random_crop(x: Tensor, padding: int) -> Tensor:
    """Reflect-pad by `padding` px, then crop back to H x W at a random offset per image.

    Instead of materialising the padded batch, each output pixel looks up its source pixel in the
    reflected image (one gather). Same result as F.pad(mode="reflect") + crop, for any padding.
    """
    if padding == 0:
        return x
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b, 1), device=x.device)  # [y/x, B, 1], px
    rows = _reflect(torch.arange(h, device=x.device) + offsets[0] - padding, h)  # [B, H]
    cols = _reflect(torch.arange(w, device=x.device) + offsets[1] - padding, w)  # [B, W]
    src = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, src).view(b, c, h, w)


def _reflect(i: Tensor, size: int) -> Tensor:
    """Index into a reflect-padded axis (edge not repeated: -1 -> 1) -> index into the axis."""
    period = 2 * (size - 1)
    i = i.remainder(period)
    return torch.minimum(i, period - i)


def random_flip(x: Tensor) -> Tensor:
    """Horizontal flip of a random half (in expectation) of the images."""
    flip = torch.rand(x.shape[0], device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ----------------------------------------------------------------------- RandAugment per sample
# The op table (names, magnitude bins, which ops take a random sign) and the dispatch of an op to
# its v2.functional kernel are v2.RandAugment's private members, reused rather than copied. The
# exact torchvision pin in pyproject.toml keeps them stable, and the tests compare our results with
# the public v2.RandAugment image by image.
_RA = v2.RandAugment(interpolation=v2.InterpolationMode.NEAREST, fill=None)  # its defaults
OPS: tuple[str, ...] = tuple(_RA._AUGMENTATION_SPACE)  # Identity, ShearX, ..., Equalize (14)
NUM_BINS = 31  # magnitude bins, as v2.RandAugment's default; cfg magnitude indexes 0..30
GROUPS = 2 * len(OPS)  # (op, sign) pairs, numbered op * 2 + negative
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")  # nearest, zero fill: pure remaps


@functools.lru_cache(maxsize=4)
def _signed(device: torch.device) -> Tensor:
    """[len(OPS)] bool, True for the ops that take a random sign; copied to the device once."""
    return torch.tensor([signed for _, signed in _RA._AUGMENTATION_SPACE.values()]).to(device)


def draw_ops(batch: int, num_ops: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Each image's RandAugment draws: op indices into OPS [num_ops, B] (int64), uniform over
    OPS like v2.RandAugment, and negated-magnitude flags [num_ops, B] (bool; False for ops
    without a sign)."""
    device = torch.device(device)
    ops = torch.randint(0, len(OPS), (num_ops, batch), device=device)
    negative = torch.rand(num_ops, batch, device=device) < 0.5
    return ops, negative & _signed(device)[ops]


def _magnitude(name: str, magnitude: int, negative: bool, h: int, w: int) -> float:
    """The signed magnitude v2.RandAugment passes to the kernel of op `name` (0.0 for no-magnitude ops)."""
    bins = _RA._AUGMENTATION_SPACE[name][0](NUM_BINS, h, w)
    return 0.0 if bins is None else float(bins[magnitude]) * (-1 if negative else 1)


def _apply_one(x: Tensor, name: str, m: float) -> Tensor:
    return _RA._apply_image_or_video_transform(x, name, m, interpolation=_RA.interpolation, fill=_RA._fill)


def _remap(x: Tensor, src: Tensor) -> Tensor:
    """x [B, C, H, W] whose output pixel i is input pixel src[i], or 0 where src[i] == H * W."""
    b, c, h, w = x.shape
    flat = torch.cat([x.reshape(b, c, h * w), x.new_zeros(b, c, 1)], dim=2)
    return flat.index_select(2, src).view(b, c, h, w)


SHARPEN_BLOCK = 32  # images per Sharpness convolution


def _sharpen(x: Tensor, factor: float, kernel: Tensor) -> Tensor:
    """v2.functional.adjust_sharpness on uint8 [B, C, H, W], step for step, with its 3x3 smoothing
    kernel given: torchvision builds that kernel from a Python list on every call, a host-to-device
    copy (and a stream sync on CUDA) per call.

    B is the number of images that drew Sharpness, different in every call. The convolution runs
    over blocks of SHARPEN_BLOCK images instead, the last one padded with blank images, so it
    always sees one input shape: cudnn.benchmark times its algorithms once, not per call."""
    out = x.float()
    padded = F.pad(out, (0, 0, 0, 0, 0, 0, 0, -len(out) % SHARPEN_BLOCK))  # on the batch axis
    blocks = [F.conv2d(block, kernel, groups=x.shape[1]) for block in padded.split(SHARPEN_BLOCK)]
    blurred = torch.cat(blocks)[: len(out)].round_()
    view = out[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view), alpha=1.0 - factor)
    return out.clamp_(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=8)  # a search varies the magnitude; ~0.8 MB per entry at 96 px
def _kernels(device: torch.device, magnitude: int, h: int, w: int) -> tuple[Callable[[Tensor], Tensor] | None, ...]:
    """One kernel per (op, sign) group, indexed op * 2 + negative; None for Identity and for the
    sign a sign-less op never draws. Built once per device, magnitude and size:
    - geometric ops (nearest interpolation, zero fill) only move pixels, so each is torchvision's
      own kernel applied once, on the host, to an image of pixel numbers: the result says where
      every output pixel comes from. One copy to the device, then one index_select per group.
    - Sharpness gets its smoothing kernel on the device (see _sharpen).
    - the other colour ops are torchvision's kernels as they are (they copy nothing to the device).
    """
    geometric = [(2 * OPS.index(name) + neg, name, neg) for name in _GEOMETRIC for neg in (0, 1)]
    probe = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)  # exact in float32
    maps = torch.stack(
        [
            _apply_one(probe, name, _magnitude(name, magnitude, bool(neg), h, w)).flatten().long() - 1
            for _, name, neg in geometric
        ]
    )
    maps = maps.where(maps >= 0, h * w).to(device)  # pixel number 0 = outside the image: the zero column
    a, b = 1.0 / 13.0, 5.0 / 13.0  # as adjust_sharpness_image
    smooth = torch.tensor([[a, a, a], [a, b, a], [a, a, a]]).expand(3, 1, 3, 3).to(device)
    kernels: list[Callable[[Tensor], Tensor] | None] = [None] * GROUPS
    for k, (g, _, _) in enumerate(geometric):
        kernels[g] = functools.partial(_remap, src=maps[k])
    for op, (name, (_, signed)) in enumerate(_RA._AUGMENTATION_SPACE.items()):
        for neg in (0, 1) if signed else (0,):
            if name in _GEOMETRIC or name == "Identity":
                continue
            m = _magnitude(name, magnitude, bool(neg), h, w)
            if name == "Sharpness":
                kernels[2 * op + neg] = functools.partial(_sharpen, factor=1.0 + m, kernel=smooth)
            else:
                kernels[2 * op + neg] = functools.partial(_apply_one, name=name, m=m)
    return tuple(kernels)


def apply_ops(x: Tensor, ops: Tensor, negative: Tensor, magnitude: int) -> Tensor:
    """Apply the drawn ops to uint8 images x [B, 3, H, W], round by round.

    Magnitude is fixed, so within a round every image that drew the same (op, sign) gets the very
    same transform: sort the images by that group, run the group's kernel once on the sub-batch
    and write it back: at most 22 kernel calls per round (13 ops, 9 with two signs), whatever the
    batch size. The sub-batch sizes of all rounds come to the host in one transfer, the call's
    only host sync; the kernels' tables are on the device already (_kernels).
    """
    rounds = ops.shape[0]
    kernels = _kernels(x.device, magnitude, *x.shape[-2:])
    group = ops * 2 + negative  # [rounds, B]: (op, sign) -> 0 .. GROUPS - 1
    keys = (group + GROUPS * torch.arange(rounds, device=x.device)[:, None]).flatten()
    # index_add_ into a fixed-size table rather than bincount, which on CUDA reads its input's
    # min and max back to the host to size its output: two more syncs.
    counts = torch.zeros(rounds * GROUPS, dtype=torch.long, device=x.device)
    counts = counts.index_add_(0, keys, torch.ones_like(keys)).view(rounds, GROUPS).tolist()  # the sync
    order = group.argsort(dim=1, stable=True)  # per round, the images of a group are contiguous
    x = x.clone()
    for r in range(rounds):
        start = 0
        for kernel, n in zip(kernels, counts[r]):
            idx, start = order[r, start : start + n], start + n
            if n and kernel is not None:
                x.index_copy_(0, idx, kernel(x.index_select(0, idx)))
    return x


def randaugment(x: Tensor, num_ops: int, magnitude: int) -> Tensor:
    """RandAugment on uint8 images with every image drawing its own `num_ops` ops and signs."""
    if num_ops == 0:
        return x
    ops, negative = draw_ops(x.shape[0], num_ops, x.device)
    return apply_ops(x, ops, negative, magnitude)


# ------------------------------------------------------------------------------ the pipeline
def augment_images(x: Tensor, cfg: AugmentConfig) -> Tensor:
    """Crop, flip and RandAugment uint8 images [B, 3, H, W] -> float32 in [0, 1], same shape.

    Meant for large chunks (thousands of images per call), which amortises the per-call kernel
    launches and the call's one host sync (the RandAugment sub-batch sizes).
    """
    x = random_crop(x, cfg.crop_padding)
    if cfg.flip:
        x = random_flip(x)
    x = randaugment(x, cfg.randaugment_ops, cfg.randaugment_magnitude)  # uint8, as torchvision's
    return x.float().div_(255)


# ---------------------------------------------------------------------------- Mixup / CutMix
def mixing_active(epoch: int, cfg: AugmentConfig) -> bool:
    """Whether Mixup/CutMix (soft-target CE) is on in `epoch` (0-based): the first mix_epochs."""
    return epoch < cfg.mix_epochs and (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0)


def make_mixer(num_classes: int, cfg: AugmentConfig) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Mixup or CutMix of a shuffled batch: mixer(float images x [B, C, H, W], int labels y [B])
    -> (images, soft targets [B, num_classes] float32, rows summing to 1). Built once per run.

    One Beta draw per batch, each image paired with its neighbour in the batch (torchvision's
    pairing), so batches must come shuffled. With both alphas 0: images as given, one-hot targets.
    """
    mixers, p = [], []
    if cfg.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
        p.append(cfg.cutmix_prob)
    if cfg.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
        p.append(1.0 - cfg.cutmix_prob)
    if not mixers:
        return lambda x, y: (x, torch.nn.functional.one_hot(y, num_classes).float())
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers, p=p)
