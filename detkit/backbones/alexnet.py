"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) — the R-CNN / SPPnet backbone.

Two variants:

* :func:`alexnet` — **paper-faithful**: 227x227x3 input; conv1 96 filters 11x11 stride 4
  -> 55x55x96 (34,944 parameters); ReLU; local response normalisation (LRN); overlapping 3x3/2
  max pool -> 27x27x96; conv2 256 5x5 pad 2 -> 27x27; LRN; pool -> 13x13; conv3 384, conv4 384,
  conv5 256 (3x3 pad 1) -> 13x13x256; pool5 -> 6x6x256 (9,216 inputs to fc6); fc6, fc7 4096;
  fc8 ``num_classes``. ``groups=2`` reproduces the paper's two-GPU split of conv2, conv4 and
  conv5 (60.97 M parameters); the default ``groups=1`` is the single-GPU form (62.38 M).
  There are no public weights in this exact layout: ``weights`` takes only local files.
* :func:`alexnet_tv` — **torchvision-compatible**: torchvision's "one weird trick" layout
  (64-192-384-256-256 filters, conv1 pad 2, no LRN, 224 input) with torchvision's state-dict
  keys, so ``torchvision.models.alexnet`` weights (``"IMAGENET1K_V1"`` or a file) load.

Both use torchvision's module layout: ``features`` (``nn.Sequential`` of conv, [norm], ReLU,
[LRN], [pool]), ``avgpool`` (adaptive, to 6x6), ``classifier`` (Dropout, fc6, ReLU, Dropout, fc7,
ReLU, fc8).

**Stages** (for ``frozen_stages``): stage ``i`` is conv_i with its norm, i = 1..5.

**Detection split** (:func:`alexnet_backbone`): trunk = conv1..conv5 with ReLUs/LRNs and pool1,
pool2 (no pool5: RoI pooling to 6x6 replaces it, as in SPPnet / Fast R-CNN). The trunk uses
"same" padding ``k // 2`` on every conv and pool (conv1 pad 5, pools pad 1), which makes each
stride-s layer map a side x to ceil(x / s); so the trunk's stride is exactly 16 and
``(N, 3, H, W) -> (N, 256, ceil(H/16), ceil(W/16))``. The weights are the classification net's.
Region head = fc6-fc7 on ``(R, 256, 6, 6)`` RoIs -> ``(R, 4096)`` (dropout included).
A ``roi_size`` other than 6 changes fc6's input size, so 6x6 weights no longer fit it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from detkit.backbones.base import Backbone
from detkit.backbones.lrn import lrn_layer
from detkit.backbones.norm import check_norm, freeze_stages, make_norm, scale_width
from detkit.backbones.weights import build_with_weights

__all__ = ["ConvSpec", "AlexNetLike", "build_alexnet_backbone", "lrn_layer", "alexnet",
           "alexnet_backbone", "alexnet_tv", "alexnet_tv_backbone"]


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer and what follows its ReLU (``post``: "lrn" / "pool" in order)."""

    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    post: tuple[str, ...] = ()


class AlexNetLike(nn.Module):
    """Five conv layers + three fully connected layers (AlexNet, ZFNet).

    Shapes: ``(N, 3, S, S) -> features (N, C5, 6, 6) -> (N, num_classes)`` at the network's
    input size S. ``stage_names[i]`` lists the submodule names of conv_{i+1} and its norm.
    """

    def __init__(self, specs: Sequence[ConvSpec], *, num_classes: int = 1000, norm: str = "none",
                 width: float = 1.0, lrn: bool = True, dropout: float = 0.5, fc: int = 4096,
                 pool_size: int = 6, ceil_pool: bool = False) -> None:
        super().__init__()
        check_norm(norm)
        layers: list[nn.Module] = []
        self.stage_names: list[list[str]] = []
        in_ch = 3
        for spec in specs:
            out = scale_width(spec.out, width)
            stage = [f"features.{len(layers)}"]
            layers.append(nn.Conv2d(in_ch, out, spec.kernel, spec.stride, spec.padding,
                                    groups=spec.groups))
            if norm != "none":
                stage.append(f"features.{len(layers)}")
                layers.append(make_norm(norm, out))
            layers.append(nn.ReLU(inplace=True))
            for op in spec.post:
                if op == "pool":
                    # 3x3 stride 2: the paper's overlapping pooling
                    layers.append(nn.MaxPool2d(3, 2, ceil_mode=ceil_pool))
                elif lrn:
                    layers.append(lrn_layer())
            self.stage_names.append(stage)
            in_ch = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        hidden = scale_width(fc, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_ch * pool_size * pool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        self.out_channels, self.hidden = in_ch, hidden

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 3, S, S)`` -> class scores ``(N, num_classes)``."""
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def build_alexnet_backbone(net: AlexNetLike, *, frozen_stages: int, roi_size: int,
                           input_size: int, name: str) -> Backbone:
    """Split an (already loaded) AlexNet-like net: trunk conv1..conv5, head fc6-fc7.

    The trunk reuses ``net``'s layers without pool5, with "same" padding ``k // 2`` on every
    conv and max pool so each stride-s layer maps x -> ceil(x / s) (stride exactly 16).
    """
    freeze_stages(net, net.stage_names, frozen_stages)
    layers = list(net.features)
    last_pool = max(i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d))
    trunk_layers = []
    for m in layers[:last_pool]:
        if isinstance(m, nn.Conv2d):
            m.padding = (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
        elif isinstance(m, nn.MaxPool2d):
            m = nn.MaxPool2d(m.kernel_size, m.stride, padding=m.kernel_size // 2)
        trunk_layers.append(m)
    head = nn.Sequential(nn.Flatten(1), *list(net.classifier)[:-1])
    return Backbone(trunk=nn.Sequential(*trunk_layers), region_head=head,
                    out_channels=net.out_channels, stride=16, roi_size=roi_size,
                    head_channels=net.hidden, input_size=input_size, name=name)


def _paper_specs(groups: int) -> list[ConvSpec]:
    return [
        ConvSpec(96, 11, 4, 0, post=("lrn", "pool")),
        ConvSpec(256, 5, 1, 2, groups, post=("lrn", "pool")),
        ConvSpec(384, 3, 1, 1),
        ConvSpec(384, 3, 1, 1, groups),
        ConvSpec(256, 3, 1, 1, groups, post=("pool",)),
    ]


TV_SPECS = [
    ConvSpec(64, 11, 4, 2, post=("pool",)),
    ConvSpec(192, 5, 1, 2, post=("pool",)),
    ConvSpec(384, 3, 1, 1),
    ConvSpec(256, 3, 1, 1),
    ConvSpec(256, 3, 1, 1, post=("pool",)),
]


def alexnet(*, num_classes: int = 1000, norm: str = "none", width: float = 1.0,
            lrn: bool = True, weights: str | None = None, dropout: float = 0.5,
            groups: int = 1, _pool_size: int = 6) -> AlexNetLike:
    """Paper-faithful AlexNet classifier, ``(N, 3, 227, 227) -> (N, num_classes)``.

    ``weights``: a local state-dict file in this layout (torchvision has none for it).
    """
    return build_with_weights(
        lambda: AlexNetLike(_paper_specs(groups), num_classes=num_classes, norm=norm, width=width,
                          lrn=lrn, dropout=dropout, pool_size=_pool_size),
        weights, None)


def alexnet_backbone(*, norm: str = "none", width: float = 1.0, frozen_stages: int = 0,
                     weights: str | None = None, roi_size: int = 6, lrn: bool = True,
                     groups: int = 1) -> Backbone:
    """Paper AlexNet split for detection: trunk ``(N,3,H,W) -> (N,256,ceil(H/16),ceil(W/16))``,
    head fc6-fc7 ``(R, 256, roi, roi) -> (R, 4096)`` (channels times ``width``)."""
    net = alexnet(norm=norm, width=width, lrn=lrn, weights=weights, groups=groups,
                  _pool_size=roi_size)
    return build_alexnet_backbone(net, frozen_stages=frozen_stages, roi_size=roi_size,
                                  input_size=227, name="alexnet")


def alexnet_tv(*, num_classes: int = 1000, norm: str = "none", width: float = 1.0,
               weights: str | None = None, dropout: float = 0.5,
               _pool_size: int = 6) -> AlexNetLike:
    """torchvision-compatible AlexNet (64-192-384-256-256, no LRN), 224 input.

    ``weights``: ``"IMAGENET1K_V1"`` (needs internet) or a torchvision ``alexnet`` state-dict
    file (norm ``"none"``, width 1 only).
    """
    return build_with_weights(
        lambda: AlexNetLike(TV_SPECS, num_classes=num_classes, norm=norm, width=width, lrn=False,
                          dropout=dropout, pool_size=_pool_size),
        weights, "alexnet")


def alexnet_tv_backbone(*, norm: str = "none", width: float = 1.0, frozen_stages: int = 0,
                        weights: str | None = None, roi_size: int = 6) -> Backbone:
    """torchvision AlexNet split for detection: trunk -> ``(N, 256, ceil(H/16), ceil(W/16))``
    (conv1 padding 5 instead of 2, pools padded: see the module docstring), head fc6-fc7."""
    net = alexnet_tv(norm=norm, width=width, weights=weights, _pool_size=roi_size)
    return build_alexnet_backbone(net, frozen_stages=frozen_stages, roi_size=roi_size,
                                  input_size=224, name="alexnet_tv")
