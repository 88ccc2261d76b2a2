"""Fully convolutional classifiers: same scores as the FC network, and the seeds' grid arithmetic."""
import pytest
import torch
from torch import nn

from detkit.backbones.alexnet import alexnet
from detkit.backbones.googlenet import googlenet
from detkit.backbones.resnet import resnet50
from detkit.backbones.vgg import vgg16
from detkit.backbones.zfnet import zfnet
from detkit.overfeat.fully_conv import FullyConvNet, fully_convolutional, linear_to_conv, window_boxes


def _close(conv_scores, fc_scores):
    scale = fc_scores.abs().max()
    torch.testing.assert_close(conv_scores, fc_scores, rtol=1e-4, atol=1e-5 * float(scale))


def _stride_from_layers(layers):
    """Product of the strides of a plain conv/pool stack (an independent count)."""
    s = 1
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            st = m.stride
            s *= st[0] if isinstance(st, tuple) else st
    return s


@pytest.mark.parametrize("build", [alexnet, zfnet, vgg16], ids=["alexnet", "zfnet", "vgg16"])
def test_fc_nets_same_scores_and_grid(build):
    torch.manual_seed(0)
    net = build(width=0.25, num_classes=7).eval()
    fcn = fully_convolutional(net).eval()
    n0 = fcn.input_size
    x = torch.randn(2, 3, n0, n0)
    with torch.no_grad():
        ref = net(x)
        out = fcn(x)
    assert out.shape == (2, 7, 1, 1)
    _close(out[:, :, 0, 0], ref)
    # total stride computed from the layer list, not typed: AlexNet 4*2*2*2 = 32, VGG 2^5 = 32
    stride = _stride_from_layers(net.features)
    assert fcn.stride == stride
    big = torch.randn(1, 3, n0 + 2 * stride, n0 + stride)
    with torch.no_grad():
        grid = fcn(big)
    assert grid.shape == (1, 7, 3, 2)        # (n0 + S*k) -> (1 + k) outputs per axis
    # (no per-crop equality here: these nets zero-pad inside, so a crop's border differs from the
    # same pixels seen in the larger image; the unpadded toy net below checks the sliding window)


def test_alexnet_227_gives_1x1_and_227_plus_32k_gives_1_plus_k():
    net = alexnet(width=0.125, num_classes=3).eval()
    fcn = fully_convolutional(net).eval()
    assert fcn.input_size == 227 and fcn.window == 6
    stride = _stride_from_layers(net.features)
    with torch.no_grad():
        for k in (0, 1, 3):
            n = 227 + stride * k
            assert fcn(torch.zeros(1, 3, n, n)).shape[-2:] == (1 + k, 1 + k)


@pytest.mark.parametrize("build", [googlenet, resnet50], ids=["googlenet", "resnet50"])
def test_gap_nets_same_scores(build):
    torch.manual_seed(0)
    net = build(width=0.0625, num_classes=5).eval()
    # a small training input keeps the test fast: the window is whatever the final map is there
    fcn = fully_convolutional(net, input_size=96).eval()
    assert fcn.window == 3 and fcn.stride == 32
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = net(x)  # adaptive (global) average pool + fc
        out = fcn(x)
        grid = fcn(torch.randn(1, 3, 96 + 32, 96))
    assert out.shape == (2, 5, 1, 1)
    _close(out[:, :, 0, 0], ref)
    assert grid.shape == (1, 5, 2, 1)
    assert isinstance(fcn.classifier[0], nn.AvgPool2d) and fcn.classifier[0].stride in (1, (1, 1))


class ToyNet(nn.Module):
    """The seeds' toy: 14x14 input -> conv 5x5 -> 10x10 -> 2x2/2 pool -> 5x5 -> fc over 5x5."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.MaxPool2d(2, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(5)
        self.classifier = nn.Sequential(nn.Linear(4 * 25, 8), nn.ReLU(), nn.Linear(8, 2))
        self.out_channels = 4

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def test_seeds_toy_14_train_16_test_gives_2x2():
    torch.manual_seed(0)
    net = ToyNet().eval()
    fcn = fully_convolutional(net, input_size=14).eval()
    assert fcn.window == 5 and fcn.stride == 2
    x14 = torch.randn(1, 3, 14, 14)
    x16 = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        _close(fcn(x14)[:, :, 0, 0], net(x14))
        out = fcn(x16)
        assert fcn.pooled(x16).shape[-2:] == (6, 6)  # 6x6 map = four 5x5 windows
        assert out.shape == (1, 2, 2, 2)
        for i in range(2):
            for j in range(2):
                _close(out[:, :, i, j], net(x16[:, :, 2 * i:2 * i + 14, 2 * j:2 * j + 14]))
        # with offset pooling the grid has the pre-pool resolution: step 1 instead of 2
        dense = fcn(x16, offsets=True)
        assert dense.shape == (1, 2, 4, 4) and fcn.grid_step(True) == 1
        _close(dense[:, :, 1, 2], _window_score(net, x16, 1, 2))


def _window_score(net, x, u, v):
    """The FC net on the pre-pool map shifted by (u, v): pool at that offset, then classify."""
    f = net.features[:2](x)[:, :, u:u + 10, v:v + 10]
    return net.classifier(nn.functional.max_pool2d(f, 2, 2).flatten(1))


def test_linear_to_conv_shares_weights():
    lin = nn.Linear(2 * 3 * 3, 4)
    conv = linear_to_conv(lin, 2, 3)
    assert conv.weight.data_ptr() == lin.weight.data_ptr()
    x = torch.randn(5, 2, 3, 3)
    torch.testing.assert_close(conv(x)[:, :, 0, 0], lin(x.flatten(1)))
    with pytest.raises(ValueError, match="^linear_to_conv: "):
        linear_to_conv(lin, 3, 3)


def test_window_boxes():
    w = window_boxes(2, 3, step=16, window=227)
    assert w.shape == (6, 4)
    assert w[4].tolist() == [16, 16, 243, 243]  # row 1, column 1


def test_unknown_network_is_a_clear_error():
    with pytest.raises(ValueError, match="^fully_convolutional: "):
        fully_convolutional(nn.Linear(3, 3))
    assert isinstance(fully_convolutional(ToyNet(), input_size=14), FullyConvNet)
