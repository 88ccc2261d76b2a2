"""IoU matching of reference boxes (anchors, proposals) to ground-truth boxes, batched over images.

Shape letters: ``N`` images, ``G`` ground-truth slots per image (padded; invalid slots masked),
``M`` reference boxes per image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``(N, G, 4)`` and ``(N, M, 4)`` xyxy boxes -> ``(N, G, M)``.

    Written here because ``torchvision.ops.box_iou`` is 2-D only; calling it per image would be a
    Python loop, and on the flattened batch it would compute ``N``-times too many pairs. Same
    formula (continuous coordinates, no "+1"); empty boxes give IoU 0, never NaN.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = torch.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


class Matcher:
    """Assign each reference box the ground truth it overlaps most, and a label from IoU bands.

    ``thresholds`` split the IoU range into bands ``[-inf, t0), [t0, t1), ..., [t_last, inf)``;
    ``labels`` gives one label per band: ``1`` positive, ``0`` negative, ``-1`` ignored. Examples:

    * RPN (Faster R-CNN): ``thresholds=(0.3, 0.7), labels=(0, -1, 1)`` — negative below 0.3,
      positive from 0.7, in between ignored; ``allow_low_quality_matches=True`` also makes the best
      anchor(s) of every ground truth positive ("the anchor with the highest IoU").
    * Fast R-CNN RoIs: ``thresholds=(0.1, 0.5), labels=(-1, 0, 1)`` — background is ``[0.1, 0.5)``.

    Invalid entries (padded ground-truth slots, ignored references) are given IoU ``-1`` by the
    caller, which lands in the lowest band; a ground truth whose best IoU is not positive gets no
    low-quality match.
    """

    def __init__(self, *, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool = False) -> None:
        thresholds = [float(t) for t in thresholds]
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"Matcher: need len(labels) == len(thresholds) + 1, got {len(labels)} "
                             f"labels for {len(thresholds)} thresholds")
        if any(a > b for a, b in zip(thresholds, thresholds[1:])):
            raise ValueError(f"Matcher: thresholds must be increasing, got {thresholds}")
        if any(int(lab) not in (-1, 0, 1) for lab in labels):
            raise ValueError(f"Matcher: labels must be -1, 0 or 1, got {list(labels)}")
        self.thresholds = thresholds
        self.labels = [int(lab) for lab in labels]
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """Match from an IoU matrix.

        Args:
            iou: ``(N, G, M)`` IoU of ground truths against reference boxes (``-1`` = invalid);
                ``G`` must be at least 1 (pad with an invalid slot for images without objects).

        Returns:
            ``matches`` ``(N, M)`` int64, the index of the matched ground truth (meaningful where
            the label is 1); ``labels`` ``(N, M)`` int8 in ``{1, 0, -1}``.
        """
        if iou.dim() != 3 or iou.shape[1] == 0:
            raise ValueError(f"Matcher: expected an (N, G>=1, M) IoU tensor, got {tuple(iou.shape)}")
        max_iou, matches = iou.max(dim=1)  # (N, M)
        # Band lookup with Python-scalar comparisons (lower bounds inclusive): no small tensors
        # built on the host per call, whose blocking copies would stall a GPU training step.
        labels = torch.full_like(max_iou, self.labels[0], dtype=torch.int8)
        for threshold, label in zip(self.thresholds, self.labels[1:]):
            labels = torch.where(max_iou >= threshold, label, labels)
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels = torch.where(is_best.any(dim=1), 1, labels).to(torch.int8)
        return matches, labels
