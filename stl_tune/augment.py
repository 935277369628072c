"""On-device batched augmentation: padded random crop, flip, RandAugment per sample, Mixup/CutMix.

Why our own module: torchvision's v2 transforms, given a batch tensor, draw ONE crop offset, ONE
flip and ONE RandAugment op for the whole batch. Per-image draws would need a Python loop over
images (a DataLoader of PIL transforms), which starves a GPU. Here every image draws its own crop,
flip and ops, and the work runs as a few batched tensor ops on the images' device. The op kernels
and the RandAugment op table are torchvision's own, so the semantics match v2.RandAugment exactly.

Randomness comes from torch's global RNG of the images' device (torch.rand(..., device=x.device)),
so a seeded run is reproducible and a resumed one continues the same stream once the trainer
restores the RNG states. Mixup/CutMix (torchvision's) draw from the CPU RNG.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
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
_SIGNED = torch.tensor([signed for _, signed in _RA._AUGMENTATION_SPACE.values()])
NUM_BINS = 31  # magnitude bins, as v2.RandAugment's default; cfg magnitude indexes 0..30


def draw_ops(batch: int, num_ops: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    """Each image's RandAugment draws: op indices into OPS [num_ops, B] (int64), uniform over
    OPS like v2.RandAugment, and negated-magnitude flags [num_ops, B] (bool; False for ops
    without a sign)."""
    ops = torch.randint(0, len(OPS), (num_ops, batch), device=device)
    negative = torch.rand(num_ops, batch, device=device) < 0.5
    return ops, negative & _SIGNED.to(device)[ops]


def apply_ops(x: Tensor, ops: Tensor, negative: Tensor, magnitude: int) -> Tensor:
    """Apply the drawn ops to uint8 images x [B, C, H, W], round by round.

    Magnitude is fixed, so within a round every image that drew the same (op, sign) gets the very
    same transform: sort the images by that group, run the torchvision kernel once per group on the
    sub-batch and write it back: at most 22 kernel calls per round (13 ops, 9 with two signs),
    whatever the batch size.
    """
    h, w = x.shape[-2:]
    x = x.clone()
    for r in range(ops.shape[0]):
        group = ops[r] * 2 + negative[r]  # (op, sign) -> 0 .. 2 * len(OPS) - 1
        order = group.argsort(stable=True)  # images of a group are contiguous in `order`
        counts = torch.bincount(group, minlength=2 * len(OPS)).tolist()  # the round's one sync
        start = 0
        for g, n in enumerate(counts):
            idx, start = order[start : start + n], start + n
            name = OPS[g // 2]
            if n == 0 or name == "Identity":
                continue
            magnitudes_fn, _ = _RA._AUGMENTATION_SPACE[name]
            bins = magnitudes_fn(NUM_BINS, h, w)
            m = 0.0 if bins is None else float(bins[magnitude]) * (-1 if g % 2 else 1)
            out = _RA._apply_image_or_video_transform(
                x.index_select(0, idx), name, m, interpolation=_RA.interpolation, fill=_RA._fill
            )
            x.index_copy_(0, idx, out)
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
    launches and the one CPU-GPU sync per RandAugment round.
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
