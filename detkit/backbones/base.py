"""The backbone contract every detector is built against (a trunk shared by all regions, a region head per region).

A classification network is split in two for detection:

* the **trunk** — the shared convolutional features, computed once per image:
  ``(N, 3, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))`` (sizes up to the network's own
  rounding), ``C = out_channels``, ``stride`` 16 for every detkit backbone;
* the **region head** — what runs on each pooled region ("fc6-fc7", "inception 5a-5b + average
  pool", "conv5_x + average pool" in the NoC design): ``(R, C, S, S) -> (R, head_channels)`` with
  ``S = roi_size``.

Detection heads (RPN, RoI box predictor, SVMs) are built from these numbers, never from the
backbone's name. Images enter the trunk already normalised with ``pixel_mean`` / ``pixel_std``
(RGB, for pixel values scaled to ``[0, 1]``); the detector does that normalisation.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A trunk plus a region head, with the shapes detection heads are built from.

    Args:
        trunk: module mapping ``(N, 3, H, W)`` images to ``(N, out_channels, H/stride, W/stride)``.
        region_head: module mapping ``(R, out_channels, roi_size, roi_size)`` pooled regions to
            ``(R, head_channels)`` features.
        out_channels: channels ``C`` of the trunk's feature map.
        stride: the trunk's total stride (16 for all detkit backbones).
        roi_size: side ``S`` of the RoI pooling output the region head expects (6, 7 or 14).
        head_channels: size ``D`` of the region head's output vector.
        input_size: the classification network's fixed input side (227 AlexNet/ZF, 224 others);
            R-CNN warps regions to it.
        name: for messages and summaries.
        pixel_mean, pixel_std: normalisation of RGB images scaled to ``[0, 1]``.
    """

    def __init__(
        self,
        *,
        trunk: nn.Module,
        region_head: nn.Module,
        out_channels: int,
        stride: int,
        roi_size: int,
        head_channels: int,
        input_size: int,
        name: str = "",
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.region_head = region_head
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.roi_size = int(roi_size)
        self.head_channels = int(head_channels)
        self.input_size = int(input_size)
        self.name = name
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    def forward(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` normalised images -> ``(N, C, H/stride, W/stride)`` trunk features."""
        return self.trunk(images)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, out_channels={self.out_channels}, stride={self.stride}, "
            f"roi_size={self.roi_size}, head_channels={self.head_channels}"
        )


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients through ``module``'s parameters (frozen stages)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module
