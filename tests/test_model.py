import copy
import dataclasses

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation

from stl_tune.config import ModelConfig
from stl_tune.model import BasicBlock, ResNet, build_model, param_count

TINY = ModelConfig(width=4, blocks=[1, 1, 1, 1], se=True, se_reduction=16, drop_path=0.5)


def tiny(**changes) -> ModelConfig:
    return dataclasses.replace(TINY, **changes)


def blocks_of(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


def randomize(model: nn.Module) -> nn.Module:
    """Non-zero residual branches: the zero-init gamma would hide what drop path does."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("stem_stride", [1, 2])
def test_output_shape(size, stem_stride):
    model = build_model(tiny(stem_stride=stem_stride), num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_param_count_matches_resnet18_with_small_image_stem():
    # torchvision's resnet18 is the same net (BasicBlocks 2-2-2-2, widths 64..512, 1x1 projection
    # shortcuts) once its 7x7 stride-2 stem + max-pool become a 3x3 stem without pooling
    reference = torchvision.models.resnet18(num_classes=10)
    reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    reference.maxpool = nn.Identity()
    cfg = ModelConfig(width=64, blocks=[2, 2, 2, 2], se=False)
    assert param_count(build_model(cfg, num_classes=10)) == param_count(reference)


@pytest.mark.parametrize("width,reduction", [(16, 16), (4, 16)])  # 4 // 16 == 0 -> 1 squeeze channel
def test_se_adds_exactly_its_layers(width, reduction):
    cfg = ModelConfig(width=width, blocks=[2, 1, 1, 1], se=False, se_reduction=reduction)
    plain = param_count(build_model(cfg, 10))
    with_se = param_count(build_model(dataclasses.replace(cfg, se=True), 10))
    expected = 0
    for stage, depth in enumerate(cfg.blocks):
        c = width * 2**stage
        s = max(1, c // reduction)
        expected += depth * (c * s + s + s * c + c)  # two linear layers with bias
    assert with_se - plain == expected


def test_se_is_torchvisions_squeeze_excitation_with_linear_layers():
    # The same network with torchvision's Conv2d SE, built from the same seed: the same weights
    # under the same names (1x1 kernels flattened), the same outputs in train and eval mode.
    cfg = tiny(drop_path=0.0)
    torch.manual_seed(0)
    ours = build_model(cfg, 10)
    torch.manual_seed(0)
    theirs = ResNet(
        widths=[4, 8, 16, 32],
        blocks=cfg.blocks,
        num_classes=10,
        stem_stride=1,
        drop_path=0.0,
        attn_layer=lambda c: SqueezeExcitation(c, max(1, c // cfg.se_reduction)),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and any(k.endswith("attn.fc1.weight") for k in a)
    assert all(torch.equal(a[k], b[k].view_as(a[k])) for k in a)
    randomize(ours), randomize(theirs)  # non-zero residual branches, so the SE output counts
    x = torch.rand(4, 3, 16, 16)
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        with torch.no_grad():
            assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_drop_path_is_identity_in_eval():
    x = torch.rand(4, 3, 16, 16)
    model = randomize(build_model(tiny(drop_path=0.9), 10)).eval()
    no_drop = build_model(tiny(drop_path=0.0), 10).eval()
    no_drop.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b, c = model(x), model(x), no_drop(x)
    assert torch.equal(a, b)
    assert torch.allclose(a, c)


def test_drop_path_is_random_in_train_mode():
    x = torch.rand(8, 3, 16, 16)
    outputs = {}
    for rate in (0.0, 0.9):
        model = randomize(build_model(tiny(drop_path=rate), 10)).train()
        with torch.no_grad():
            torch.manual_seed(0)
            first = model(x)
            torch.manual_seed(1)
            outputs[rate] = (first, model(x))
    assert torch.allclose(*outputs[0.0])  # control: train-mode BN alone is deterministic
    assert not torch.allclose(*outputs[0.9])


def test_drop_path_rates_rise_linearly_to_the_last_block():
    model = build_model(tiny(blocks=[2, 1, 3, 1], drop_path=0.3), 10)
    rates = torch.tensor([b.drop_path.p for b in blocks_of(model)])
    assert len(rates) == 7
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.3)
    assert torch.allclose(rates.diff(), torch.full((6,), 0.3 / 6))


def test_residual_branches_start_at_zero():
    # zero-init last BN gamma: an identity-shortcut block starts as ReLU of its input
    block = blocks_of(build_model(tiny(blocks=[2, 1, 1, 1]), 10))[1]
    assert isinstance(block.shortcut, nn.Identity)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block.eval()(x), torch.relu(x))


def test_normalization_travels_in_state_dict_and_is_applied():
    mean, std = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)
    model = randomize(build_model(tiny(), 10, mean=mean, std=std)).eval()
    state = model.state_dict()
    assert torch.allclose(state["mean"].flatten(), torch.tensor(mean))
    assert torch.allclose(state["std"].flatten(), torch.tensor(std))

    identity = build_model(tiny(), 10, mean=(0.0,) * 3, std=(1.0,) * 3).eval()
    identity.load_state_dict({**state, "mean": identity.mean, "std": identity.std})
    x = torch.rand(2, 3, 16, 16)
    manual = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), identity(manual), atol=1e-5)

    restored = build_model(tiny(), 10).eval()  # default mean/std, overwritten by the checkpoint
    restored.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(restored(x), model(x))


def test_input_channels_follow_mean():
    model = build_model(tiny(), 3, mean=(0.5,), std=(0.25,)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match="one value per channel"):
        build_model(tiny(), 3, mean=(0.5,), std=(0.25, 0.25))


def test_channels_last_input():
    model = randomize(build_model(tiny(), 10)).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, expected, atol=1e-5)
