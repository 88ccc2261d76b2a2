"""RoI pooling (Fast R-CNN §2.1): each region of the shared feature map to a fixed ``S x S`` grid.

``mode="pool"`` is the paper's RoI max pooling (``torchvision.ops.roi_pool``: box corners rounded
to feature cells, max over each of the ``S x S`` sub-windows); ``mode="align"`` is RoI Align
(``torchvision.ops.roi_align``, bilinear sampling, no rounding) as an option. When RoI Align
needs a gradient on the CPU it is computed as two matrix products instead
(:mod:`detkit.roi_heads.separable_roi_align`: the same values, forward and backward in a third
of the time).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from detkit.roi_heads.separable_roi_align import roi_align_separable

# The separable RoI Align holds (RoIs per image * S, C * W) floats per image; past this (128 MB:
# e.g. ResNet-101's 1024-channel 14x14 RoIs) torchvision's kernel is used.
SEPARABLE_MAX_ELEMENTS = 2 ** 25


class RoIPool(nn.Module):
    """Pool regions of a ``(N, C, Hf, Wf)`` feature map to ``(R, C, S, S)``.

    Args:
        output_size: ``S`` — the backbone's ``roi_size`` (6 AlexNet/ZF, 7 VGG-16, 14 ResNet NoC).
        spatial_scale: feature cells per image pixel, ``1 / Backbone.stride``.
        mode: ``"pool"`` (RoI max pooling) or ``"align"`` (RoI Align).
        sampling_ratio: RoI Align's samples per bin side (``-1``: adaptive); unused for ``"pool"``.
    """

    def __init__(self, *, output_size: int, spatial_scale: float, mode: str = "pool",
                 sampling_ratio: int = 2) -> None:
        super().__init__()
        if mode not in ("pool", "align"):
            raise ValueError(f"RoIPool: mode must be 'pool' or 'align', got {mode!r}")
        if output_size <= 0 or spatial_scale <= 0:
            raise ValueError(f"RoIPool: output_size ({output_size}) and spatial_scale "
                             f"({spatial_scale}) must be positive")
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.mode = mode
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, features: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """Pool regions.

        Args:
            features: ``(N, C, Hf, Wf)``.
            rois: a list of ``N`` ``(P_i, 4)`` xyxy boxes, a ``(N, P, 4)`` padded tensor (all ``P``
                slots pooled), or ``(R, 5)`` rows ``(image index, x1, y1, x2, y2)``; image pixels.

        Returns:
            ``(R, C, S, S)``, regions in the order given (image by image for lists / padded).
        """
        rois = self._as_rows(rois, features)
        if rois.dtype != features.dtype:
            if torch.is_autocast_enabled(features.device.type):
                # Keep box coordinates in float32 (bf16 would round a coordinate of 600 to a
                # multiple of 4 pixels) and pool in float32, as torchvision's CUDA autocast rule
                # does; its CPU autocast has no rule for roi_pool, which then rejects mixed dtypes.
                features = features.float()
            else:
                rois = rois.to(features.dtype)
        if self.mode == "pool":
            return roi_pool(features, rois, self.output_size, self.spatial_scale)
        if self._separable(features, rois):
            return roi_align_separable(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio)
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         sampling_ratio=self.sampling_ratio, aligned=True)

    def _separable(self, features: Tensor, rois: Tensor) -> bool:
        """RoI Align as matrix products: on the CPU, when a gradient is wanted (its forward alone is
        not faster), for a fixed sampling ratio, and while its per-image product stays small."""
        if features.device.type != "cpu" or not (features.requires_grad and torch.is_grad_enabled()):
            return False
        n, c, _, w = features.shape
        most = int(torch.bincount(rois[:, 0].long(), minlength=n).max()) if len(rois) else 0
        return self.sampling_ratio > 0 and most * self.output_size * c * w <= SEPARABLE_MAX_ELEMENTS  # (P*S, C*W)

    @staticmethod
    def _as_rows(rois: Tensor | list[Tensor], features: Tensor, *, owner: str = "RoIPool") -> Tensor:
        """``rois`` in any accepted layout -> ``(R, 5)`` rows; ``owner`` names the caller's class in errors."""
        if isinstance(rois, (list, tuple)):
            if len(rois) != features.shape[0]:
                raise ValueError(f"{owner}: {len(rois)} box lists for {features.shape[0]} images")
            idx = torch.cat([torch.full((len(b),), i, dtype=torch.float32, device=features.device)
                             for i, b in enumerate(rois)])
            boxes = torch.cat([b.to(features.device, torch.float32).reshape(-1, 4) for b in rois])
            return torch.cat((idx[:, None], boxes), dim=1)
        if rois.dim() == 3 and rois.shape[-1] == 4:
            n, p, _ = rois.shape
            idx = torch.arange(n, device=rois.device, dtype=rois.dtype)[:, None, None].expand(n, p, 1)
            return torch.cat((idx, rois), dim=2).reshape(-1, 5)
        if rois.dim() == 2 and rois.shape[1] == 5:
            return rois
        raise ValueError(f"{owner}: rois must be a list of (P, 4), (N, P, 4) or (R, 5), "
                         f"got shape {tuple(rois.shape)}")
