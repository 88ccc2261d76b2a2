"""Spatial pyramid pooling (SPPNet, He et al. 2014, §2.3 and §4 "SPP-net for object detection").

A proposal's window on the last conv map (``(N, C, Hf, Wf)``, stride 16) is max-pooled into
``l x l`` bins for every pyramid level ``l`` (default ``{6, 3, 2, 1}``: 36 + 9 + 4 + 1 = 50 bins)
and the levels are concatenated into one fixed-length vector ``(R, C * 50)`` for fc6, whatever the
window and image size. Each level is ``torchvision.ops.roi_pool`` (the window's corners rounded to
feature cells, every bin non-empty even for windows smaller than ``l`` cells), so no pooling is
written by hand. Output layout: level by level, each flattened ``(C, l, l)`` channel-major.

Multi-scale testing (SPPNet §4): the trunk runs once per scale ``s`` (shorter image side in
{480, 576, 688, 864, 1200}), and each window is pooled at the single scale where the scaled window
has a number of pixels closest to 224 x 224 (``best_scale``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_pool

from detkit.roi_heads.roi_pool import RoIPool


def best_scale(boxes: Tensor, scales: Sequence[float] | Tensor, *, target: float = 224.0,
               image_size: tuple[int, int] | None = None) -> Tensor:
    """SPPNet's scale choice: per box, the scale whose scaled box area is closest to ``target^2``.

    Args:
        boxes: ``(R, 4)`` xyxy boxes in original image pixels.
        scales: ``S`` resize factors (scaled image = factor x original), or, with ``image_size``,
            shorter-side lengths such as ``(480, 576, 688, 864, 1200)``.
        target: side of the reference square (224, the pre-training input).
        image_size: ``(h, w)`` of the original image; converts shorter-side lengths into factors
            ``s / min(h, w)``.

    Returns:
        ``(R,)`` int64 index into ``scales``.
    """
    factors = torch.as_tensor(scales, dtype=torch.float64, device=boxes.device).reshape(-1)
    if factors.numel() == 0 or bool((factors <= 0).any()):
        raise ValueError(f"best_scale: scales must be positive numbers, got {list(factors.tolist())}")
    if image_size is not None:
        factors = factors / min(image_size)
    b = boxes.to(torch.float64)
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return (area[:, None] * factors[None, :] ** 2 - target ** 2).abs().argmin(dim=1)


class SpatialPyramidPool(nn.Module):
    """Spatial pyramid pooling of RoI windows: ``(N, C, Hf, Wf)`` features -> ``(R, C * sum l^2)``.

    Args:
        levels: pyramid levels ``l`` (``l x l`` bins each); SPPNet: ``(6, 3, 2, 1)`` = 50 bins.
        spatial_scale: feature cells per image pixel, ``1 / Backbone.stride``.
    """

    def __init__(self, *, levels: Sequence[int] = (6, 3, 2, 1), spatial_scale: float = 1 / 16) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v <= 0 for v in levels) or spatial_scale <= 0:
            raise ValueError(f"SpatialPyramidPool: levels must be positive ints and spatial_scale positive, "
                             f"got {levels}, {spatial_scale}")
        self.levels = levels
        self.spatial_scale = float(spatial_scale)

    @property
    def num_bins(self) -> int:
        """``sum l^2`` (50 for SPPNet's pyramid); the output has ``C * num_bins`` features."""
        return sum(v * v for v in self.levels)

    def forward(self, features: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """Pool windows.

        Args:
            features: ``(N, C, Hf, Wf)`` last conv map.
            rois: a list of ``N`` ``(P_i, 4)`` xyxy windows, ``(N, P, 4)``, or ``(R, 5)`` rows
                ``(image index, x1, y1, x2, y2)``, in image pixels (as ``RoIPool``).

        Returns:
            ``(R, C * num_bins)``.
        """
        if features.dim() != 4:
            raise ValueError(f"SpatialPyramidPool: features must be (N, C, H, W), got {tuple(features.shape)}")
        rows = RoIPool._as_rows(rois, features, owner="SpatialPyramidPool")
        if rows.dtype != features.dtype:
            if torch.is_autocast_enabled(features.device.type):
                # as RoIPool: pool in float32 under autocast (torchvision's CPU roi_pool has no
                # bf16 kernel, and bf16 box corners would be rounded to whole multiples of 4 px)
                features = features.float()
            else:
                rows = rows.to(features.dtype)
        return torch.cat([roi_pool(features, rows, level, self.spatial_scale).flatten(1)
                          for level in self.levels], dim=1)

    def forward_multiscale(self, features: Sequence[Tensor], rois: Sequence[Tensor],
                           scale_factors: Tensor, *, target: float = 224.0) -> Tensor:
        """Pool each window at its best scale (SPPNet multi-scale testing).

        Args:
            features: ``S`` maps ``(N, C, Hf_s, Wf_s)``, the trunk run on the images resized by
                ``scale_factors[:, s]``.
            rois: ``N`` tensors ``(P_i, 4)`` of windows in *original* image pixels.
            scale_factors: ``(N, S)`` resize factor of image ``n`` at scale ``s``.
            target: see ``best_scale``.

        Returns:
            ``(sum P_i, C * num_bins)``, windows in the order given.
        """
        n = len(rois)
        if scale_factors.shape != (n, len(features)):
            raise ValueError(f"SpatialPyramidPool: scale_factors must be ({n}, {len(features)}), got "
                             f"{tuple(scale_factors.shape)}")
        dev, dtype = features[0].device, features[0].dtype
        boxes = torch.cat([r.to(dev, torch.float32).reshape(-1, 4) for r in rois])
        img = torch.cat([torch.full((len(r),), i, device=dev, dtype=torch.long) for i, r in enumerate(rois)])
        factors = scale_factors.to(dev, torch.float32)
        choice = torch.cat([best_scale(r.to(dev).reshape(-1, 4), factors[i], target=target)
                            for i, r in enumerate(rois)])
        out = torch.zeros(len(boxes), features[0].shape[1] * self.num_bins, device=dev, dtype=dtype)
        for s, fmap in enumerate(features):
            sel = (choice == s).nonzero()[:, 0]
            if len(sel) == 0:
                continue
            scaled = boxes[sel] * factors[img[sel], s][:, None]
            out[sel] = self(fmap, torch.cat((img[sel, None].to(scaled), scaled), dim=1)).to(dtype)
        return out
