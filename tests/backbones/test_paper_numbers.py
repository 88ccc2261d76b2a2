"""The papers' numbers for AlexNet, ZFNet and GoogLeNet (layer shapes, parameters, multiply-adds), from the real modules.

Shapes at the papers' input sizes are propagated on the ``meta`` device (no compute).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.backbones.alexnet import alexnet
from detkit.backbones.googlenet import googlenet
from detkit.backbones.vgg import vgg16
from detkit.backbones.zfnet import zfnet




def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def trace(seq: nn.Sequential, x: torch.Tensor) -> list[tuple[nn.Module, tuple]]:
    """(layer, output shape without batch) for each layer of ``seq``."""
    out = []
    for layer in seq:
        x = layer(x)
        out.append((layer, tuple(x.shape[1:])))
    return out


def test_alexnet_conv1_pool1_and_fc6_input():
    with torch.device("meta"):
        net = alexnet()
        shapes = trace(net.features, torch.empty(1, 3, 227, 227))
    conv1 = net.features[0]
    assert (conv1.kernel_size, conv1.stride, conv1.out_channels) == ((11, 11), (4, 4), 96)
    assert shapes[0][1] == (96, 55, 55)  # (227 - 11) / 4 + 1 = 55
    # 11 * 11 * 3 = 363 weights + 1 bias per filter, 96 filters
    assert n_params(conv1) == (11 * 11 * 3 + 1) * 96 == 34_944
    pools = [s for layer, s in shapes if isinstance(layer, nn.MaxPool2d)]
    assert pools[0] == (96, 27, 27)  # overlapping 3x3/2 pool
    assert pools[-1] == (256, 6, 6)  # before fc6
    assert net.classifier[1].in_features == 6 * 6 * 256
    lrn_after = [shapes[i - 1][0] for i, (m, _) in enumerate(shapes)
                 if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn_after) == 2 and all(isinstance(m, nn.ReLU) for m in lrn_after)


def test_alexnet_parameter_total():
    # the paper's layers: (kernel, in, out) for conv1..conv5, then fc6, fc7, fc8
    convs = [(11, 3, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    by_hand = sum(k * k * i * o + o for k, i, o in convs) + sum(i * o + o for i, o in fcs)
    with torch.device("meta"):
        single, split = alexnet(), alexnet(groups=2)
    assert n_params(single) == by_hand
    # the two-GPU split halves the inputs of conv2, conv4, conv5
    halved = sum(k * k * i * o // 2 for k, i, o in (convs[1], convs[3], convs[4]))
    assert n_params(split) == by_hand - halved
    for n in (n_params(single), n_params(split)):
        assert 60.5e6 < n < 62.5e6  # "about 61-62 M" (60.97 M split, 62.38 M single)


def test_zfnet_conv1_110_then_55():
    with torch.device("meta"):
        net = zfnet()
        shapes = trace(net.features, torch.empty(1, 3, 224, 224))
    conv1 = net.features[0]
    assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
    assert shapes[0][1] == (96, 110, 110)
    pools = [s for layer, s in shapes if isinstance(layer, nn.MaxPool2d)]
    assert pools == [(96, 55, 55), (256, 13, 13), (256, 6, 6)]
    conv2 = net.features[4]
    assert (conv2.kernel_size, conv2.stride, conv2.out_channels) == ((5, 5), (2, 2), 256)
    assert all(m.groups == 1 for m in net.modules() if isinstance(m, nn.Conv2d))  # no GPU split


@pytest.fixture(scope="module")
def inception_3a():
    with torch.device("meta"):
        net = googlenet().eval()
    module = net.inception3a
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, (i[0].shape, o.shape)))
             for m in module.modules() if isinstance(m, nn.Conv2d) or m is module]
    net(torch.empty(1, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    return net, module, seen


def test_inception_3a_maps_and_parameters(inception_3a):
    net, module, seen = inception_3a
    in_shape, out_shape = seen[module]
    assert tuple(in_shape[1:]) == (192, 28, 28) and tuple(out_shape[1:]) == (256, 28, 28)
    assert module.branch3[1].conv.kernel_size == (5, 5)  # the paper's real 5x5 branch
    # weights: 1x1 192*64 + 3x3 reduce 192*96 + 3x3 96*9*128 + 5x5 reduce 192*16
    #          + 5x5 16*25*32 + pool proj 192*32 = 163,328; biases 64+96+128+16+32+32 = 368
    weights = 192 * 64 + 192 * 96 + 96 * 9 * 128 + 192 * 16 + 16 * 25 * 32 + 192 * 32
    assert weights == 163_328
    assert n_params(module) == weights + 368
    # the paper's Table 1 says "159K": 163,328 / 1024 = 159.5 K (binary kilo)
    assert weights // 1024 == 159
    assert 5e6 < n_params(net) < 7.1e6  # whole network without aux classifiers: ~7.0 M


def test_inception_3a_multiply_adds(inception_3a):
    _, _, seen = inception_3a
    macs = 0
    for m, (_, out) in seen.items():
        if isinstance(m, nn.Conv2d):  # out_maps * out_h * out_w * (in_ch / groups) * kh * kw
            _, c, h, w = out
            macs += c * h * w * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    assert macs == 163_328 * 28 * 28  # every weight used once per output position
    assert round(macs / 1e6) == 128  # Table 1: 128 M ops


def test_three_stacked_3x3_convs_see_7x7():
    torch.manual_seed(0)
    net = vgg16(width=0.125)
    convs = [net.get_submodule(n) for n in net.stage_names[2]]  # conv3_1..conv3_3
    assert len(convs) == 3 and all(c.kernel_size == (3, 3) for c in convs)
    x = torch.randn(1, convs[0].in_channels, 21, 21, requires_grad=True)
    y = x
    with torch.no_grad():
        for c in convs:  # positive weights: no cancellation can hide a contributing pixel
            c.weight.abs_()
    for c in convs:
        y = c(y)
    y[0, :, 10, 10].sum().backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (7, 13, 7, 13)
    assert rows.numel() == 7 * 7
