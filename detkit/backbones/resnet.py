"""ResNet-101 / ResNet-50 (He et al. 2015) — the NoC / Faster R-CNN "ResNet" backbone.

Bottleneck blocks 1x1 -> 3x3 -> 1x1 (expansion 4), identity shortcuts, a projection (1x1 conv +
norm) where the shape changes, stride-2 convolutions instead of pooling between stages:

==========  ==================  ======================  ==================
stage       paper name          blocks (101 / 50)       output (224 input)
==========  ==================  ======================  ==================
1           conv1 + pool        7x7/2 64, 3x3/2 max     56x56x64
2           conv2_x             3 / 3                   56x56x256
3           conv3_x             4 / 4                   28x28x512
4           conv4_x             23 / 6                  14x14x1024
5           conv5_x             3 / 3                   7x7x2048
==========  ==================  ======================  ==================

Module names and state-dict keys are torchvision's (``conv1, bn1, layer1..layer4, fc``; each
block ``conv1..3, bn1..3, downsample.0/1``), built from ``torchvision.models.resnet.Bottleneck``,
so torchvision's ``resnet101`` / ``resnet50`` weights load. Like torchvision ("ResNet v1.5")
the stride-2 of a stage's first block sits in its 3x3 conv; the paper put it in the first 1x1.
The norm layers keep the name ``bn*`` whatever ``norm`` is; ``norm="none"`` (Identity) exists
for completeness only — the paper's ResNet always has batch norm.

**Stages** (``frozen_stages``): 1 = ``conv1`` + ``bn1`` (the stem), 2 = ``layer1`` (conv2_x),
3 = ``layer2``, 4 = ``layer3``, 5 = ``layer4``.

**Detection split (NoC)** (:func:`resnet101_backbone`): trunk conv1..conv4_x
``(N, 3, H, W) -> (N, 1024, ceil(H/16), ceil(W/16))`` (every stride-2 layer pads ``k // 2``, so
x -> ceil(x / 2) exactly); region head conv5_x (first block stride 2: 14x14 RoIs -> 7x7) +
global average pool: ``(R, 1024, 14, 14) -> (R, 2048)``. Batch norm is frozen by default.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from detkit.backbones.base import Backbone
from detkit.backbones.norm import check_norm, freeze_stages, make_norm, scale_width
from detkit.backbones.weights import build_with_weights

__all__ = ["ResNet", "resnet101", "resnet50", "resnet101_backbone", "resnet50_backbone"]

STAGE_NAMES = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


class ResNet(nn.Module):
    """Bottleneck ResNet with torchvision's keys, ``(N, 3, 224, 224) -> (N, num_classes)``."""

    stage_names = STAGE_NAMES

    def __init__(self, layers: list[int], *, num_classes: int = 1000, norm: str = "bn",
                 width: float = 1.0) -> None:
        super().__init__()
        check_norm(norm)
        norm_layer = partial(make_norm, norm)
        stem = scale_width(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = stem
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            planes = scale_width(planes, width)
            stride = 1 if i == 0 else 2
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, planes * Bottleneck.expansion, 1, stride, bias=False),
                norm_layer(planes * Bottleneck.expansion))
            mods = [Bottleneck(in_ch, planes, stride, downsample, norm_layer=norm_layer)]
            in_ch = planes * Bottleneck.expansion
            mods += [Bottleneck(in_ch, planes, norm_layer=norm_layer) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.out_channels = in_ch
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, 224, 224)`` -> class scores ``(N, num_classes)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(depth_layers: list[int], tv_name: str, num_classes: int, norm: str, width: float,
           weights: str | None) -> ResNet:
    return build_with_weights(
        lambda: ResNet(depth_layers, num_classes=num_classes, norm=norm, width=width),
        weights, tv_name)


def _backbone(net: ResNet, frozen_stages: int, roi_size: int, name: str) -> Backbone:
    freeze_stages(net, net.stage_names, frozen_stages)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                          net.layer3)
    head = nn.Sequential(net.layer4, net.avgpool, nn.Flatten(1))
    return Backbone(trunk=trunk, region_head=head, out_channels=net.layer3[-1].conv3.out_channels,
                    stride=16, roi_size=roi_size, head_channels=net.out_channels,
                    input_size=224, name=name)


def resnet101(*, num_classes: int = 1000, norm: str = "bn", width: float = 1.0,
              weights: str | None = None) -> ResNet:
    """ResNet-101 ([3, 4, 23, 3]); weights: torchvision ``resnet101`` enum name or file."""
    return _build([3, 4, 23, 3], "resnet101", num_classes, norm, width, weights)


def resnet50(*, num_classes: int = 1000, norm: str = "bn", width: float = 1.0,
             weights: str | None = None) -> ResNet:
    """ResNet-50 ([3, 4, 6, 3]); weights: torchvision ``resnet50`` enum name or file."""
    return _build([3, 4, 6, 3], "resnet50", num_classes, norm, width, weights)


def resnet101_backbone(*, norm: str = "frozen_bn", width: float = 1.0, frozen_stages: int = 0,
                       weights: str | None = None, roi_size: int = 14) -> Backbone:
    """NoC split of ResNet-101: trunk conv1..conv4_x -> ``(N, 1024, ceil(H/16), ceil(W/16))``,
    head conv5_x + average pool ``(R, 1024, 14, 14) -> (R, 2048)`` (channels times ``width``)."""
    net = resnet101(norm=norm, width=width, weights=weights)
    return _backbone(net, frozen_stages, roi_size, "resnet101")


def resnet50_backbone(*, norm: str = "frozen_bn", width: float = 1.0, frozen_stages: int = 0,
                      weights: str | None = None, roi_size: int = 14) -> Backbone:
    """NoC split of ResNet-50, shapes as :func:`resnet101_backbone`."""
    net = resnet50(norm=norm, width=width, weights=weights)
    return _backbone(net, frozen_stages, roi_size, "resnet50")
