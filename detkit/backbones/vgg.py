"""VGG-16 (Simonyan & Zisserman 2014, configuration D) — the Fast/Faster R-CNN backbone.

Paper-faithful *and* torchvision-compatible (torchvision's ``vgg16`` is configuration D):
only 3x3 convolutions (stride 1, pad 1) and 2x2 max pools (stride 2); 13 conv + 3 fc layers.

====================  ===================  ===================
block (paper names)   filters              output (224 input)
====================  ===================  ===================
conv1_1, conv1_2      64                   224x224 -> pool1 112
conv2_1, conv2_2      128                  112 -> pool2 56
conv3_1..conv3_3      256                  56 -> pool3 28
conv4_1..conv4_3      512                  28 -> pool4 14
conv5_1..conv5_3      512                  14 -> pool5 7x7x512
fc6, fc7, fc8         4096, 4096, classes  7*7*512 = 25,088 inputs to fc6
====================  ===================  ===================

Module layout and state-dict keys are torchvision's: ``features.N`` (conv, [norm], ReLU, pools),
``avgpool`` (adaptive 7x7), ``classifier.N`` (fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8).
``norm="none"`` is torchvision's ``vgg16`` layout and ``norm="bn"`` its ``vgg16_bn`` layout, so
both weight sets load (``"IMAGENET1K_V1"`` or a file); ``"frozen_bn"`` also loads ``vgg16_bn``.

**Stages:** stage ``i`` = block conv{i}_x (its convs and norms), i = 1..5. Fast R-CNN freezes
conv1-conv2 when fine-tuning (``frozen_stages=2``); the builders default to 0.

**Detection split** (:func:`vgg16_backbone`): trunk conv1_1..conv5_3 with pool1..pool4 (no
pool5), pools in ``ceil_mode`` so ``(N, 3, H, W) -> (N, 512, ceil(H/16), ceil(W/16))``
(identical values to the classification net whenever H, W are multiples of 16). Region head
fc6-fc7 (with dropout) on ``(R, 512, 7, 7)`` RoIs -> ``(R, 4096)``.
"""
from __future__ import annotations

from torch import Tensor, nn

from detkit.backbones.base import Backbone
from detkit.backbones.norm import check_norm, freeze_stages, make_norm, scale_width
from detkit.backbones.weights import build_with_weights

__all__ = ["VGG", "CFG_D", "vgg16", "vgg16_backbone"]

CFG_D = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG(nn.Module):
    """VGG with torchvision's keys: ``(N, 3, 224, 224) -> (N, num_classes)``.

    ``stage_names[i]`` lists the submodule names of block conv{i+1}_x's convs and norms.
    """

    def __init__(self, cfg: list[list[int]] = CFG_D, *, num_classes: int = 1000,
                 norm: str = "none", width: float = 1.0, dropout: float = 0.5, fc: int = 4096,
                 pool_size: int = 7) -> None:
        super().__init__()
        check_norm(norm)
        layers: list[nn.Module] = []
        self.stage_names: list[list[str]] = []
        in_ch = 3
        for block in cfg:
            stage = []
            for c in block:
                out = scale_width(c, width)
                stage.append(f"features.{len(layers)}")
                # torchvision keeps the conv bias even before batch norm (vgg16_bn has it)
                layers.append(nn.Conv2d(in_ch, out, 3, padding=1))
                if norm != "none":
                    stage.append(f"features.{len(layers)}")
                    layers.append(make_norm(norm, out))
                layers.append(nn.ReLU(inplace=True))
                in_ch = out
            layers.append(nn.MaxPool2d(2, 2))
            self.stage_names.append(stage)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        hidden = scale_width(fc, width)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * pool_size * pool_size, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.out_channels, self.hidden = in_ch, hidden
        self._init()

    def _init(self) -> None:
        # torchvision's VGG initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, 224, 224)`` -> class scores ``(N, num_classes)``."""
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16(*, num_classes: int = 1000, norm: str = "none", width: float = 1.0,
          weights: str | None = None, dropout: float = 0.5, _pool_size: int = 7) -> VGG:
    """VGG-16 classifier (configuration D); ``norm="bn"`` is torchvision's ``vgg16_bn``.

    ``weights``: torchvision enum name (``vgg16`` / ``vgg16_bn``) or a state-dict file.
    """
    return build_with_weights(
        lambda: VGG(CFG_D, num_classes=num_classes, norm=norm, width=width, dropout=dropout,
                  pool_size=_pool_size),
        weights, "vgg16" if norm == "none" else "vgg16_bn")


def vgg16_backbone(*, norm: str = "none", width: float = 1.0, frozen_stages: int = 0,
                   weights: str | None = None, roi_size: int = 7) -> Backbone:
    """VGG-16 split for detection: trunk conv1_1..conv5_3
    ``(N, 3, H, W) -> (N, 512, ceil(H/16), ceil(W/16))``, head fc6-fc7
    ``(R, 512, roi, roi) -> (R, 4096)`` (channels times ``width``)."""
    net = vgg16(norm=norm, width=width, weights=weights, _pool_size=roi_size)
    freeze_stages(net, net.stage_names, frozen_stages)
    layers = list(net.features)[:-1]  # drop pool5: RoI pooling replaces it
    trunk = nn.Sequential(*[nn.MaxPool2d(2, 2, ceil_mode=True) if isinstance(m, nn.MaxPool2d)
                            else m for m in layers])
    head = nn.Sequential(nn.Flatten(1), *list(net.classifier)[:-1])
    return Backbone(trunk=trunk, region_head=head, out_channels=net.out_channels, stride=16,
                    roi_size=roi_size, head_channels=net.hidden, input_size=224, name="vgg16")
