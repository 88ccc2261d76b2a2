"""ZFNet (Zeiler & Fergus 2013, "Visualizing and Understanding Convolutional Networks", Fig. 3).

AlexNet with a smaller, denser first layer and no two-GPU split:

====================  =========================================  ==================
layer                 paper                                      output (224 input)
====================  =========================================  ==================
conv1                 96 filters 7x7 stride 2 (here pad 1)       110x110x96
pool1, LRN            3x3 max pool stride 2 (ceil), contrast norm 55x55x96
conv2                 256 filters 5x5 stride 2                   26x26x256
pool2, LRN            3x3 max pool stride 2 (ceil), contrast norm 13x13x256
conv3, conv4, conv5   384, 384, 256 filters 3x3 pad 1            13x13x256
pool5                 3x3 max pool stride 2                      6x6x256
fc6, fc7, fc8         4096, 4096, num_classes
====================  =========================================  ==================

**Padding, and why:** the paper reports 110x110 after conv1 on its 224x224 crops, but
(224 - 7) / 2 + 1 = 109.5. Padding 1 gives floor((224 + 2 - 7) / 2) + 1 = 110 exactly. The
paper then reports 55x55 after 3x3/2 pooling; floor((110 - 3) / 2) + 1 = 54, so the pools use
``ceil_mode=True`` (Caffe's pooling rounds up): ceil(107 / 2) + 1 = 55. Likewise 26 -> 13. The
classification input is therefore 224 (the paper's crop size), not AlexNet's 227.

Unlike AlexNet, ZF pools *before* normalising ("rectified, pooled, contrast normalized").

**No public weights exist for ZFNet** (neither torchvision nor the authors released any):
``weights`` accepts only a local state-dict file in this layout (e.g. one you trained).

**Stages:** stage ``i`` is conv_i with its norm, i = 1..5.

**Detection split** (:func:`zfnet_backbone`, as for AlexNet): trunk conv1..conv5 without pool5,
with "same" padding ``k // 2`` on every conv and pool (conv1 pad 3, conv2 pad 2, pools pad 1,
no ceil mode), so each stride-2 layer maps x -> ceil(x / 2) and
``(N, 3, H, W) -> (N, 256, ceil(H/16), ceil(W/16))``; region head fc6-fc7 on
``(R, 256, 6, 6)`` RoIs -> ``(R, 4096)``.
"""
from __future__ import annotations

from detkit.backbones.alexnet import AlexNetLike, ConvSpec, build_alexnet_backbone
from detkit.backbones.base import Backbone
from detkit.backbones.weights import build_with_weights

__all__ = ["ZF_SPECS", "zfnet", "zfnet_backbone"]

ZF_SPECS = [
    ConvSpec(96, 7, 2, 1, post=("pool", "lrn")),
    ConvSpec(256, 5, 2, 0, post=("pool", "lrn")),
    ConvSpec(384, 3, 1, 1),
    ConvSpec(384, 3, 1, 1),
    ConvSpec(256, 3, 1, 1, post=("pool",)),
]


def zfnet(*, num_classes: int = 1000, norm: str = "none", width: float = 1.0, lrn: bool = True,
          weights: str | None = None, dropout: float = 0.5,
          _pool_size: int = 6) -> AlexNetLike:
    """ZFNet classifier, ``(N, 3, 224, 224) -> (N, num_classes)``; weights: local file only."""
    return build_with_weights(
        lambda: AlexNetLike(ZF_SPECS, num_classes=num_classes, norm=norm, width=width, lrn=lrn,
                          dropout=dropout, pool_size=_pool_size, ceil_pool=True),
        weights, None)


def zfnet_backbone(*, norm: str = "none", width: float = 1.0, frozen_stages: int = 0,
                   weights: str | None = None, roi_size: int = 6, lrn: bool = True) -> Backbone:
    """ZFNet split for detection: trunk ``(N,3,H,W) -> (N,256,ceil(H/16),ceil(W/16))``,
    head fc6-fc7 ``(R, 256, roi, roi) -> (R, 4096)`` (channels times ``width``)."""
    net = zfnet(norm=norm, width=width, lrn=lrn, weights=weights, _pool_size=roi_size)
    return build_alexnet_backbone(net, frozen_stages=frozen_stages, roi_size=roi_size,
                                  input_size=224, name="zfnet")
