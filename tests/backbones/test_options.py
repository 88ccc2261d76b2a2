"""Every backbone x every norm at width 0.25: trunk and region head run with the declared shapes,
``channels_last`` gives the same features, and ``frozen_stages`` freezes exactly its stages.

The size rule every trunk promises: ``(N, 3, H, W) -> (N, out_channels, ceil(H/16), ceil(W/16))``
for any H, W (so exactly H/16 for the multiples of 32 that ``ImageBatch`` produces).
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detkit.backbones.alexnet import alexnet, alexnet_backbone, alexnet_tv, alexnet_tv_backbone
from detkit.backbones.googlenet import (googlenet, googlenet_backbone, googlenet_tv,
                                        googlenet_tv_backbone)
from detkit.backbones.norm import NORMS, FrozenBatchNorm2d
from detkit.backbones.resnet import resnet50, resnet101, resnet101_backbone
from detkit.backbones.vgg import vgg16, vgg16_backbone
from detkit.backbones.zfnet import zfnet, zfnet_backbone




# builder -> (trunk channels, head channels, roi size) at width 0.25, from the papers' widths
EXPECTED = {
    alexnet_backbone: (256 // 4, 4096 // 4, 6),
    alexnet_tv_backbone: (256 // 4, 4096 // 4, 6),
    zfnet_backbone: (256 // 4, 4096 // 4, 6),
    vgg16_backbone: (512 // 4, 4096 // 4, 7),
    # inception 4e = 256 + 320 + 128 + 128 maps, 5b = 384 + 384 + 128 + 128, each / 4
    googlenet_backbone: (832 // 4, 1024 // 4, 7),
    googlenet_tv_backbone: (832 // 4, 1024 // 4, 7),
    resnet101_backbone: (1024 // 4, 2048 // 4, 14),
}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("builder", list(EXPECTED), ids=lambda b: b.__name__)
def test_builds_and_runs_with_declared_shapes(builder, norm):
    torch.manual_seed(0)
    bb = builder(norm=norm, width=0.25).eval()
    channels, head_channels, roi = EXPECTED[builder]
    assert (bb.out_channels, bb.head_channels, bb.roi_size, bb.stride) == (
        channels, head_channels, roi, 16)
    with torch.no_grad():
        h, w = 80, 104  # 5 strides high, 6.5 wide: both sides of the ceil rule
        x = torch.randn(1, 3, h, w)
        feats = bb(x)
        assert feats.shape == (1, channels, math.ceil(h / 16), math.ceil(w / 16))
        assert torch.isfinite(feats).all()
        regions = bb.region_head(torch.randn(2, channels, roi, roi))
        assert regions.shape == (2, head_channels)
        # channels_last input through a channels_last model: the same features up to the
        # summation order of channels_last kernels (a layout bug would differ by O(1))
        bb.to(memory_format=torch.channels_last)
        cl = bb(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, feats, rtol=1e-3, atol=1e-3 * feats.abs().max().item())


@pytest.mark.parametrize("builder, size", [
    (alexnet, 227), (alexnet_tv, 224), (zfnet, 224), (vgg16, 224), (googlenet, 224),
    (googlenet_tv, 224), (resnet101, 224), (resnet50, 224)],
    ids=lambda v: getattr(v, "__name__", v))
@torch.no_grad()
def test_classification_nets_at_their_input_size(builder, size):
    net = builder(width=0.25, num_classes=10).eval()
    assert net(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_googlenet_auxiliary_classifiers():
    torch.manual_seed(0)
    net = googlenet(width=0.25, num_classes=7, aux_logits=True).train()
    logits, aux2, aux1 = net(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux1.shape == aux2.shape == (2, 7)
    assert net.aux1.conv.conv.in_channels == net.inception4a.out_channels
    with torch.device("meta"):  # the paper's auxiliary heads sit on 4a (512) and 4d (528)
        full = googlenet(aux_logits=True)
    assert (full.aux1.conv.conv.in_channels, full.aux2.conv.conv.in_channels) == (512, 528)
    assert net.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 7)  # eval: logits only


def _frozen_names(bb: nn.Module) -> set[str]:
    return {n for n, p in bb.named_parameters() if not p.requires_grad}


def _under(bb: nn.Module, prefixes: tuple[str, ...]) -> set[str]:
    return {n for n, _ in bb.named_parameters() if n.startswith(prefixes)}


def test_frozen_stages_vgg_conv1_conv2_as_fast_rcnn():
    bb = vgg16_backbone(norm="bn", width=0.25, frozen_stages=2)
    # features with bn: conv1_1=0 (bn 1), conv1_2=3 (bn 4), pool1=6, conv2_1=7, conv2_2=10
    frozen_convs = ("trunk.0.", "trunk.3.", "trunk.7.", "trunk.10.")
    assert _frozen_names(bb) == _under(bb, frozen_convs) and _frozen_names(bb)
    assert all(isinstance(bb.trunk[i], FrozenBatchNorm2d) for i in (1, 4, 8, 11))
    assert isinstance(bb.trunk[15], nn.BatchNorm2d)  # conv3_1's norm still trains


def test_frozen_stages_resnet_stem_and_conv2_x():
    bb = resnet101_backbone(norm="bn", width=0.25, frozen_stages=2)
    # trunk = conv1, bn1, relu, maxpool, layer1 (conv2_x), layer2, layer3
    assert _frozen_names(bb) == _under(bb, ("trunk.0.", "trunk.4."))
    assert isinstance(bb.trunk[1], FrozenBatchNorm2d)
    assert all(not isinstance(m, nn.BatchNorm2d) for m in bb.trunk[4].modules())
    assert isinstance(bb.trunk[5][0].bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in bb.region_head.parameters())


def test_frozen_stages_googlenet_and_alexnet():
    bb = googlenet_backbone(norm="gn", width=0.25, frozen_stages=3)
    stages = ("trunk.conv1.", "trunk.conv2.", "trunk.conv3.", "trunk.inception3a.",
              "trunk.inception3b.")
    assert _frozen_names(bb) == _under(bb, stages)  # group norms freeze with their stage
    bb = alexnet_backbone(width=0.25, frozen_stages=1)
    assert _frozen_names(bb) == {"trunk.0.weight", "trunk.0.bias"}
    bb = zfnet_backbone(width=0.25, frozen_stages=5)  # the whole trunk, not the head
    assert _frozen_names(bb) == _under(bb, ("trunk.",))
    with pytest.raises(ValueError, match="frozen_stages"):
        vgg16_backbone(width=0.25, frozen_stages=6)
