"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going deeper with convolutions", Table 1).

Two variants with torchvision's module names (``conv1, maxpool1, conv2, conv3, maxpool2,
inception3a..5b, aux1, aux2, avgpool, dropout, fc``; each inception module ``branch1`` (1x1),
``branch2`` (3x3 reduce, 3x3), ``branch3`` (5x5 reduce, "5x5"), ``branch4`` (3x3/1 max pool,
pool proj), each conv a ``BasicConv2d`` with ``conv`` + ``bn`` + ReLU):

* :func:`googlenet` — **paper-faithful**: real 5x5 convolutions in ``branch3``, no batch norm
  (``norm="none"``, convs with biases), LRN after conv1's pool and after conv3, 3x3/2 max pools,
  dropout 0.4; auxiliary classifiers after 4a and 4d with ``aux_logits=True`` (for
  classification training; in train mode ``forward`` then returns ``(logits, aux2, aux1)``).
  No public weights: ``weights`` takes only local files.
* :func:`googlenet_tv` — **torchvision-compatible**: 3x3 in the "5x5" branch, batch norm
  (eps 1e-3) and no LRN, 2x2 pool before 5a, dropout 0.2, so torchvision's ``googlenet``
  weights load. Those weights expect inputs scaled to [-1, 1]: ``transform_input`` (default:
  on when ``weights`` is given, as in torchvision) converts ImageNet-normalised inputs.

Inception 3a at 28x28x192 -> 28x28x256 = 64 (1x1) + 128 (3x3) + 32 (5x5) + 32 (pool proj).
Feature maps at 224 input: conv1 112, maxpool1 56, conv3 56x56x192, maxpool2 28, 3a/3b 28,
maxpool3 14, 4a..4e 14 (4e: 832 maps), maxpool4 7, 5a/5b 7x7x1024, average pool -> 1024.

**Stages:** 1 = ``conv1``; 2 = ``conv2``, ``conv3``; 3 = inception 3a-3b; 4 = inception
4a-4e; 5 = inception 5a-5b (the auxiliary classifiers belong to no stage).

**Detection split** (:func:`googlenet_backbone`): trunk conv1..inception 4e,
``(N, 3, H, W) -> (N, 832, ceil(H/16), ceil(W/16))``; its three stride-2 pools pad odd sides
by one (-inf) at the bottom/right so they map x -> ceil(x / 2) and equal the classification
net's pools on even sides. Region head inception 5a-5b + global average pool on
``(R, 832, 7, 7)`` RoIs -> ``(R, 1024)`` (channels times ``width``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.googlenet import GoogLeNetOutputs

from detkit.backbones.lrn import lrn_layer
from detkit.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from detkit.backbones.norm import check_norm, freeze_stages, make_norm, scale_width
from detkit.backbones.weights import build_with_weights

__all__ = ["BasicConv2d", "Inception", "InceptionAux", "GoogLeNet", "googlenet",
           "googlenet_backbone", "googlenet_tv", "googlenet_tv_backbone"]

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
INCEPTION = OrderedDict([
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
])
STAGE_NAMES = [["conv1"], ["conv2", "conv3"], ["inception3a", "inception3b"],
               [f"inception4{c}" for c in "abcde"], ["inception5a", "inception5b"]]


class BasicConv2d(nn.Module):
    """conv -> norm -> ReLU; the conv has a bias only when there is no norm (the paper)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
                 norm: str = "none") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=norm == "none")
        self.bn = make_norm(norm, cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Inception module ``(N, cin, H, W) -> (N, c1 + c3 + c5 + cp, H, W)`` (branches concatenated).

    ``k5`` is the "5x5" branch's kernel: 5 in the paper, 3 in torchvision.
    """

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, *,
                 k5: int = 5, norm: str = "none") -> None:
        super().__init__()
        self.branch1 = BasicConv2d(cin, c1, 1, norm=norm)
        self.branch2 = nn.Sequential(BasicConv2d(cin, c3r, 1, norm=norm),
                                     BasicConv2d(c3r, c3, 3, padding=1, norm=norm))
        self.branch3 = nn.Sequential(BasicConv2d(cin, c5r, 1, norm=norm),
                                     BasicConv2d(c5r, c5, k5, padding=k5 // 2, norm=norm))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(cin, cp, 1, norm=norm))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on 14x14 maps: 4x4 average pool, 1x1 conv 128, fc 1024, dropout 0.7,
    fc ``num_classes``. (The paper pools 5x5/3, which gives the same 4x4 grid at 14x14.)"""

    def __init__(self, cin: int, num_classes: int, *, width: float, norm: str) -> None:
        super().__init__()
        c, hidden = scale_width(128, width), scale_width(1024, width)
        self.conv = BasicConv2d(cin, c, 1, norm=norm)
        self.fc1 = nn.Linear(c * 16, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(0.7)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4))).flatten(1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


class CeilHalfMaxPool(nn.Module):
    """3x3/2 max pool mapping a side x to ceil(x / 2); equals ``MaxPool2d(3, 2, ceil_mode=True)``
    on even sides (odd sides get one -inf row/column at the bottom/right)."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), value=float("-inf"))
        return F.max_pool2d(x, 3, 2, ceil_mode=True)


class GoogLeNet(nn.Module):
    """Inception v1, ``(N, 3, 224, 224) -> (N, num_classes)``; see the module docstring."""

    stage_names = STAGE_NAMES

    def __init__(self, *, num_classes: int = 1000, norm: str = "none", width: float = 1.0,
                 k5: int = 5, lrn: bool = True, dropout: float = 0.4, aux_logits: bool = False,
                 pool4: int = 3, transform_input: bool = False) -> None:
        super().__init__()
        check_norm(norm)
        w = lambda c: scale_width(c, width)  # noqa: E731
        self.transform_input = transform_input
        self.conv1 = BasicConv2d(3, w(64), 7, stride=2, padding=3, norm=norm)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.lrn1 = lrn_layer() if lrn else nn.Identity()
        self.conv2 = BasicConv2d(w(64), w(64), 1, norm=norm)
        self.conv3 = BasicConv2d(w(64), w(192), 3, padding=1, norm=norm)
        self.lrn2 = lrn_layer() if lrn else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        cin = w(192)
        for name, cfg in INCEPTION.items():
            module = Inception(cin, *(w(c) for c in cfg), k5=k5, norm=norm)
            setattr(self, f"inception{name}", module)
            cin = module.out_channels
            if name == "3b":
                self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
            elif name == "4e":
                self.maxpool4 = nn.MaxPool2d(pool4, 2, ceil_mode=True)
        self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, width=width,
                                 norm=norm) if aux_logits else None
        self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, width=width,
                                 norm=norm) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        self.out_channels = cin
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _transform(self, x: Tensor) -> Tensor:
        # torchvision's: ImageNet-normalised input -> (pixel - 0.5) / 0.5
        if not self.transform_input:
            return x
        mean, std = x.new_tensor(IMAGENET_MEAN), x.new_tensor(IMAGENET_STD)
        return (x * std[:, None, None] + mean[:, None, None] - 0.5) / 0.5

    def stem(self, x: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> conv3's pooled maps ``(N, 192, H/8, W/8)``."""
        x = self.lrn1(self.maxpool1(self.conv1(self._transform(x))))
        return self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))

    def forward(self, x: Tensor) -> Tensor | GoogLeNetOutputs:
        """Class scores ``(N, num_classes)``; ``(logits, aux2, aux1)`` in training with aux."""
        x = self.stem(x)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.avgpool(self.inception5b(self.inception5a(x))).flatten(1)
        logits = self.fc(self.dropout(x))
        if aux1 is not None:
            return GoogLeNetOutputs(logits, aux2, aux1)
        return logits


def googlenet(*, num_classes: int = 1000, norm: str = "none", width: float = 1.0,
              lrn: bool = True, weights: str | None = None, dropout: float = 0.4,
              aux_logits: bool = False) -> GoogLeNet:
    """Paper-faithful GoogLeNet (real 5x5 branches); weights: local file only."""
    return build_with_weights(
        lambda: GoogLeNet(num_classes=num_classes, norm=norm, width=width, k5=5, lrn=lrn,
                        dropout=dropout, aux_logits=aux_logits, pool4=3),
        weights, None)


def googlenet_tv(*, num_classes: int = 1000, norm: str = "bn", width: float = 1.0,
                 weights: str | None = None, dropout: float = 0.2, aux_logits: bool = False,
                 transform_input: bool | None = None) -> GoogLeNet:
    """torchvision-compatible GoogLeNet; weights: ``"IMAGENET1K_V1"`` or a torchvision
    ``googlenet`` state-dict file saved with ``aux_logits`` matching."""
    if transform_input is None:
        transform_input = weights is not None
    return build_with_weights(
        lambda: GoogLeNet(num_classes=num_classes, norm=norm, width=width, k5=3, lrn=False,
                        dropout=dropout, aux_logits=aux_logits, pool4=2,
                        transform_input=transform_input),
        weights, "googlenet")


def _backbone(net: GoogLeNet, frozen_stages: int, roi_size: int, name: str) -> Backbone:
    freeze_stages(net, net.stage_names, frozen_stages)
    trunk = nn.Sequential(OrderedDict(
        [("conv1", net.conv1), ("maxpool1", CeilHalfMaxPool()), ("lrn1", net.lrn1),
         ("conv2", net.conv2), ("conv3", net.conv3), ("lrn2", net.lrn2),
         ("maxpool2", CeilHalfMaxPool())]
        + [(f"inception3{c}", getattr(net, f"inception3{c}")) for c in "ab"]
        + [("maxpool3", CeilHalfMaxPool())]
        + [(f"inception4{c}", getattr(net, f"inception4{c}")) for c in "abcde"]))
    head = nn.Sequential(OrderedDict([("inception5a", net.inception5a),
                                      ("inception5b", net.inception5b),
                                      ("avgpool", net.avgpool), ("flatten", nn.Flatten(1))]))
    # transform_input folded into the detector's normalisation: pixels in [0,1] -> [-1, 1]
    mean, std = ((0.5,) * 3, (0.5,) * 3) if net.transform_input else (IMAGENET_MEAN, IMAGENET_STD)
    return Backbone(trunk=trunk, region_head=head, out_channels=net.inception4e.out_channels,
                    stride=16, roi_size=roi_size, head_channels=net.out_channels,
                    input_size=224, name=name, pixel_mean=mean, pixel_std=std)


def googlenet_backbone(*, norm: str = "none", width: float = 1.0, frozen_stages: int = 0,
                       weights: str | None = None, roi_size: int = 7,
                       lrn: bool = True) -> Backbone:
    """Paper GoogLeNet split: trunk -> ``(N, 832, ceil(H/16), ceil(W/16))``, head 5a-5b + avg
    pool ``(R, 832, roi, roi) -> (R, 1024)``."""
    net = googlenet(norm=norm, width=width, lrn=lrn, weights=weights)
    return _backbone(net, frozen_stages, roi_size, "googlenet")


def googlenet_tv_backbone(*, norm: str = "bn", width: float = 1.0, frozen_stages: int = 0,
                          weights: str | None = None, roi_size: int = 7) -> Backbone:
    """torchvision GoogLeNet split, shapes as :func:`googlenet_backbone`."""
    net = googlenet_tv(norm=norm, width=width, weights=weights)
    return _backbone(net, frozen_stages, roi_size, "googlenet_tv")
