"""The R-CNN box parameterisation ("bounding-box regression", R-CNN appendix C).

A box ``G`` is coded relative to a reference box ``P`` (an anchor or a proposal) as::

    t_x = w_x * (G_x - P_x) / P_w        t_w = w_w * log(G_w / P_w)
    t_y = w_y * (G_y - P_y) / P_h        t_h = w_h * log(G_h / P_h)

with centres ``(x, y)``, sizes ``(w, h)`` and weights ``(w_x, w_y, w_w, w_h)``. Fast R-CNN
normalises the targets to zero mean and unit variance with std ``(0.1, 0.1, 0.2, 0.2)``, i.e. the
weights ``(10, 10, 5, 5)``; the RPN uses ``(1, 1, 1, 1)``.

Boxes are ``xyxy`` in continuous pixel coordinates (``w = x2 - x1``, no "+1"; see
``detkit/data/record.py``). All functions broadcast over any leading dimensions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Largest log-scale a decoded box may grow by: exp(clamp) = 1000/16, as in torchvision/detectron2,
# so a wild early prediction cannot overflow exp().
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas from reference boxes and decode deltas back into boxes.

    Args:
        weights: ``(w_x, w_y, w_w, w_h)``, the inverse of the target standard deviations.
        scale_clamp: upper bound on ``t_w / w_w`` and ``t_h / w_h`` when decoding.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        if len(weights) != 4 or any(float(w) <= 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive numbers, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """``(..., 4)`` target boxes and ``(..., 4)`` reference boxes -> ``(..., 4)`` deltas."""
        wx, wy, ww, wh = self.weights
        boxes = boxes.float()
        reference = reference.float()
        pw = reference[..., 2] - reference[..., 0]
        ph = reference[..., 3] - reference[..., 1]
        px = reference[..., 0] + 0.5 * pw
        py = reference[..., 1] + 0.5 * ph
        gw = boxes[..., 2] - boxes[..., 0]
        gh = boxes[..., 3] - boxes[..., 1]
        gx = boxes[..., 0] + 0.5 * gw
        gy = boxes[..., 1] + 0.5 * gh
        return torch.stack(
            (wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)),
            dim=-1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """``(..., 4)`` deltas applied to ``(..., 4)`` reference boxes -> ``(..., 4)`` boxes.

        Shapes broadcast, so class-specific deltas ``(R, K, 4)`` decode against ``(R, 1, 4)``.
        """
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()
        reference = reference.float()
        pw = reference[..., 2] - reference[..., 0]
        ph = reference[..., 3] - reference[..., 1]
        px = reference[..., 0] + 0.5 * pw
        py = reference[..., 1] + 0.5 * ph
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = dx * pw + px
        cy = dy * ph + py
        w = torch.exp(dw) * pw
        h = torch.exp(dh) * ph
        return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def clip_boxes(boxes: Tensor, image_hw: Tensor) -> Tensor:
    """Clip ``(N, ..., 4)`` boxes to each image: ``image_hw`` is ``(N, 2)`` (height, width)."""
    shape = (image_hw.shape[0],) + (1,) * (boxes.dim() - 2)
    h = image_hw[:, 0].to(boxes.dtype).view(shape)
    w = image_hw[:, 1].to(boxes.dtype).view(shape)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)
