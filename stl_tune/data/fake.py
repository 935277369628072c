"""Small learnable fake datasets in STL-10's exact binary layout, for tests and smoke runs."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import STL10

from stl_tune.data.stl10 import STL10_SIDE, write_split

FAKE_NOISE = 0.2  # std of per-pixel Gaussian noise, in [0, 1] pixel units


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """[B] hue (turns), saturation, value in [0, 1] -> [B,3] RGB in [0, 1] (the standard formula)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return v[:, None] * (1 - s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1)))


def _fake_images(labels: Tensor, num_classes: int, g: torch.Generator) -> Tensor:
    """uint8 [B,3,96,96] fake images whose class is a texture (stripes or a checker, one of
    ceil(n/2) orientations) tinted with one of n hues. Tints of neighbouring classes overlap, the
    patch lands anywhere at any size and phase, and a random colour background, a distractor patch
    of random texture and colour, and strong noise are added, so a tiny CNN needs both cues."""
    b = len(labels)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    n_orient = math.ceil(num_classes / 2)
    checker = labels >= n_orient  # first half of the classes stripes, second half checkers
    angle = (labels % n_orient) * math.pi / n_orient + (rand(b) - 0.5) * 0.2  # radians, +-5.7 deg
    hue = labels / num_classes + (rand(b) - 0.5) * 1.2 / num_classes  # +-0.6 class spacings

    pix = (torch.arange(STL10_SIDE) + 0.5) / STL10_SIDE  # pixel centres in [0, 1] image units
    yy, xx = pix[None, :, None], pix[None, None, :]  # [1,H,1], [1,1,W]

    def patch(angle: Tensor, checker: Tensor, scale: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """A textured soft disc: (texture in [-1, 1], mask in [0, 1]), each [B,H,W]."""
        r = (scale[0] + (scale[1] - scale[0]) * rand(b))[:, None, None] / 2  # radius, image units
        cy, cx = (rand(2, b)[..., None, None] * 0.8 + 0.1).unbind(0)  # centre may be near an edge
        cycles = 1.5 + 1.5 * rand(b)[:, None, None]  # periods across the disc: survives 16 px
        phase = 2 * math.pi * rand(2, b)[..., None, None]
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        u = ((xx - cx) * cos + (yy - cy) * sin) * cycles * math.pi / r
        v = (-(xx - cx) * sin + (yy - cy) * cos) * cycles * math.pi / r
        stripes = (u + phase[0]).sin()
        tex = torch.where(checker[:, None, None], stripes * (v + phase[1]).sin() * 2, stripes)
        dist = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() / r
        return tex.clamp(-1, 1), (4 * (1 - dist)).clamp(0, 1)  # edge softened over 1/4 radius

    # Background: a 3x3 grid of random colours, bilinearly smoothed; a distractor of no class.
    blobs = rand(b, 3, 3, 3) * 0.4 + rand(b, 1, 1, 1) * 0.4 + 0.1  # muted: a grey level plus colour
    bg = torch.nn.functional.interpolate(blobs, size=STL10_SIDE, mode="bilinear")
    d_tex, d_mask = patch(rand(b) * math.pi, rand(b) < 0.5, (0.25, 0.5))
    d_rgb = _hsv_to_rgb(rand(b), 0.3 + 0.5 * rand(b), 0.4 + 0.5 * rand(b))[:, :, None, None]
    img = bg * (1 - d_mask[:, None]) + d_mask[:, None] * d_rgb * (0.6 + 0.4 * d_tex[:, None])

    tex, mask = patch(angle, checker, (0.5, 0.95))
    rgb = _hsv_to_rgb(hue % 1, 0.7 + 0.3 * rand(b), 0.6 + 0.4 * rand(b))[:, :, None, None]
    fg = rgb * (0.55 + 0.45 * tex[:, None])  # texture contrast rides on the class tint
    img = img * (1 - mask[:, None]) + mask[:, None] * fg
    img = img * (0.7 + 0.6 * rand(b))[:, None, None, None]  # brightness
    img = img + FAKE_NOISE * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def write_fake_stl10(
    out_dir: str | Path,
    train_per_class: int = 50,
    test_per_class: int = 30,
    seed: int = 0,
    num_classes: int = 10,
) -> Path:
    """Write a small learnable dataset as out_dir/stl10_binary/{train,test}_{X,y}.bin and
    class_names.txt, in STL-10's exact layout; returns out_dir (use it as data.dir).

    Class names describe the cue, e.g. "stripes-36deg-hue072"."""
    if not 2 <= num_classes <= 10:
        raise ValueError(f"num_classes must be 2..10 (STL-10 labels are 1..10), got {num_classes}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("write_fake_stl10 needs at least one train and one test image per class")
    out_dir = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]
        images = torch.cat([_fake_images(chunk, num_classes, g) for chunk in labels.split(256)])
        write_split(out_dir, split, images, labels)
    n_orient = math.ceil(num_classes / 2)
    names = [
        f"{'checker' if c >= n_orient else 'stripes'}-{round((c % n_orient) * 180 / n_orient)}deg"
        f"-hue{round(c * 360 / num_classes):03d}"
        for c in range(num_classes)
    ]
    (out_dir / STL10.base_folder / STL10.class_names_file).write_text("\n".join(names) + "\n")
    return out_dir
