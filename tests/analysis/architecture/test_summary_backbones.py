"""The summary tool's numbers for detkit's backbones agree with the papers' numbers."""
from __future__ import annotations

import pytest
import torch

from detkit.analysis.architecture import summarize

alexnet = pytest.importorskip("detkit.backbones.alexnet")
vgg = pytest.importorskip("detkit.backbones.vgg")
googlenet = pytest.importorskip("detkit.backbones.googlenet")
resnet = pytest.importorskip("detkit.backbones.resnet")
zfnet = pytest.importorskip("detkit.backbones.zfnet")


def _meta(builder, **kw):
    with torch.device("meta"):  # shapes only: full-size networks cost nothing
        return builder(**kw)


def test_alexnet_conv1_and_pool1():
    s = summarize(_meta(alexnet.alexnet), 227)
    conv1 = s.row("features.0")
    assert conv1.output_shape == (96, 55, 55) and conv1.params == 34_944
    assert conv1.stride == (4, 4) and conv1.rf == (11, 11)
    pool1 = next(r for r in s.rows if r.type == "MaxPool2d")
    assert pool1.output_shape == (96, 27, 27) and pool1.rf == (19, 19)  # 11 + 2·4
    assert s.row("avgpool").output_shape == (256, 6, 6)


def test_zfnet_conv1_110_then_55():
    s = summarize(_meta(zfnet.zfnet), 224)
    convs = [r for r in s.rows if r.type == "Conv2d"]
    pools = [r for r in s.rows if r.type == "MaxPool2d"]
    assert convs[0].output_shape[1:] == (110, 110) and pools[0].output_shape[1:] == (55, 55)


def test_googlenet_inception_3a():
    s = summarize(_meta(googlenet.googlenet), 224, depth=1)
    row = s.row("inception3a")
    assert row.output_shape == (256, 28, 28)
    # paper table: 159 K parameters, 128 M ops (its count omits a few biases)
    assert row.params == pytest.approx(159e3, rel=0.04)
    assert row.macs == pytest.approx(128e6, rel=0.01)
    assert row.stride == (8, 8)


def test_vgg16_parameters_equal_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = summarize(_meta(vgg.vgg16), 224)
    theirs = _meta(torchvision.models.vgg16)
    assert ours.total_params == sum(p.numel() for p in theirs.parameters())
    fc6 = next(r for r in ours.rows if r.type == "Linear")
    assert fc6.params == 7 * 7 * 512 * 4096 + 4096  # 25,088 inputs to fc6
    # conv1_1..conv1_2, pool, conv2_1: three 3×3 convolutions... the first three see 3, 5, 6 (pool)
    assert [r.rf[0] for r in ours.rows[:5] if r.type != "ReLU"] == [3, 5, 6]


@pytest.mark.parametrize("builder", [
    alexnet.alexnet_backbone, alexnet.alexnet_tv_backbone, zfnet.zfnet_backbone, vgg.vgg16_backbone,
    googlenet.googlenet_backbone, googlenet.googlenet_tv_backbone, resnet.resnet101_backbone,
    resnet.resnet50_backbone,
])
def test_backbone_trunk_stride_and_head_shapes(builder):
    bb = _meta(builder)
    s = summarize(bb, (96, 160), depth=1)
    trunk, head = s.part("trunk"), s.part("region_head")
    assert trunk.output_stride == (bb.stride, bb.stride) == (16, 16)  # by the recurrence
    assert trunk.output_shape == (bb.out_channels, 6, 10)
    assert head.input_shape == (1, bb.out_channels, bb.roi_size, bb.roi_size)
    assert head.output_shape == (bb.head_channels,)
    assert s.total_params == sum(p.numel() for p in bb.parameters())


def test_resnet101_trunk_has_1024_channels_at_stride_16():
    s = summarize(_meta(resnet.resnet101_backbone), 224, depth=1)
    assert s.part("trunk").output_shape == (1024, 14, 14)
