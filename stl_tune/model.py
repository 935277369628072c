"""The network: a ResNet of BasicBlocks for small images, with optional Squeeze-Excitation and
stochastic depth per block, and input normalization built in so saved weights are self-contained.

Input: float images in [0, 1], shape (N, C, H, W) with C = len(mean). Output: logits (N, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from stl_tune.config import ModelConfig


# ------------------------------------------------------------------------------------ parts
def conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv (no bias: the BN right after it has one) + BatchNorm."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


class SqueezeExcite(nn.Module):
    """Squeeze-Excitation (Hu et al. 2018): each channel scaled by a gate computed from the means
    of all channels through a ReLU bottleneck of `squeeze` units and a sigmoid.

    Why not torchvision.ops.SqueezeExcitation: its two layers are 1x1 Conv2d on a 1x1 map, a
    convolution (and a convolution backward) for what is a matrix product. As nn.Linear on the
    pooled vector (same parameters, names and initialization here), the gate's forward + backward
    ran faster on a CPU, though it dispatches a few more ops (docs/BENCHMARKS.md, "The
    Squeeze-Excitation gate"; not measured on a GPU).
    """

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))), inplace=True)))
        return x * gate[:, :, None, None]


def squeeze_excite(channels: int, reduction: int) -> SqueezeExcite:
    # at least 1 squeeze channel: narrow stages (width 4, reduction 16) would otherwise get none
    return SqueezeExcite(channels, max(1, channels // reduction))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers, an attention layer on the branch, drop path, residual add, ReLU.

    The block receives its parts: `attn_layer(channels)` builds the attention layer (nn.Identity
    for none: it ignores its arguments), `drop_path` is a ready module (one rate per block).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        attn_layer: Callable[[int], nn.Module],
        drop_path: nn.Module,
    ):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1)
        self.attn = attn_layer(c_out)
        self.drop_path = drop_path
        # 1x1 projection only where the shape changes; otherwise the input passes as is
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = conv_bn(c_in, c_out, 1, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x), inplace=True))
        branch = self.drop_path(self.attn(branch))
        return F.relu(branch + self.shortcut(x), inplace=True)


# ------------------------------------------------------------------------------------ network
class ResNet(nn.Module):
    def __init__(
        self,
        widths: Sequence[int],  # channels per stage
        blocks: Sequence[int],  # BasicBlocks per stage
        num_classes: int,
        stem_stride: int,
        attn_layer: Callable[[int], nn.Module],
        drop_path: float,  # stochastic-depth rate of the deepest block
        mean: Sequence[float],  # per-channel input mean, images in [0, 1]
        std: Sequence[float],  # per-channel input standard deviation
    ):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        # buffers, not constants: they travel with the state_dict, so a checkpoint alone reproduces
        # the predictions without knowing the dataset statistics it was trained with
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        # 3x3 stem, no max-pool: 96-px images are small; stem_stride 2 halves the resolution instead
        self.stem = nn.Sequential(conv_bn(len(mean), widths[0], 3, stem_stride), nn.ReLU(inplace=True))

        # timm-style stochastic depth: rate i of n rises linearly from 0 to drop_path at the last block
        n = sum(blocks)
        rates = iter([drop_path * i / max(n - 1, 1) for i in range(n)])
        stages, c_in = [], widths[0]
        for s, (c_out, depth) in enumerate(zip(widths, blocks)):
            stage = []
            for b in range(depth):
                stride = 2 if s > 0 and b == 0 else 1
                drop = StochasticDepth(next(rates), mode="row")  # per sample; identity in eval
                stage.append(BasicBlock(c_in, c_out, stride, attn_layer, drop))
                c_in = c_out
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            # the SE gate's Linear layers are 1x1 convolutions on a 1x1 map: initialized as such
            if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and m is not self.head):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN gamma of every residual branch (Goyal et al. 2017): each block starts as
        # its shortcut plus ReLU, so the deep net trains like a shallow one at first and the early,
        # noisy steps of a small data set cannot blow up the residual sums.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))  # global average pool


# ------------------------------------------------------------------------------------ API
def build_model(
    cfg: ModelConfig,
    num_classes: int,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
) -> ResNet:
    """The ResNet of `cfg` (stages w-2w-4w-8w); input channels = len(mean)."""
    attn = partial(squeeze_excite, reduction=cfg.se_reduction) if cfg.se else nn.Identity
    return ResNet(
        widths=[cfg.width * 2**s for s in range(len(cfg.blocks))],
        blocks=cfg.blocks,
        num_classes=num_classes,
        stem_stride=cfg.stem_stride,
        attn_layer=attn,
        drop_path=cfg.drop_path,
        mean=mean,
        std=std,
    )


def param_count(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers such as BN statistics and mean/std not counted)."""
    return sum(p.numel() for p in model.parameters())
