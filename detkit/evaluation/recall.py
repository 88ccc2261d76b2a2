"""Proposal quality against the ground truth: recall at IoU thresholds and mean best overlap.

For each image, the first ``N`` proposals (the proposer's order is its ranking) are compared with
the ground-truth boxes. A ground truth's **best overlap** is its highest IoU with any of them (0
when there are none).

* **recall@t** (Uijlings et al.; Hosang et al.): the fraction of all ground truths, pooled over the
  images and classes, whose best overlap is ``>= t``.
* **MABO** (mean average best overlap, Uijlings et al. 2013): the average best overlap over the
  ground truths **of each class** (ABO), then the mean over the classes that have ground truths:
  every class weighs the same, as in the paper. ``abo`` in the result is the plain average over all
  ground truths (dominated by frequent classes, e.g. red blood cells in BCCD).

Difficult (VOC) and crowd (COCO) ground truths are left out. IoU is the continuous one of
``torchvision.ops.box_iou``, which on detkit's 0-based continuous boxes equals the VOC devkit's
"+1" rule on inclusive pixel indices (detkit.data.record).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from detkit.data.record import DetectionData

__all__ = ["proposal_recall", "best_overlaps"]


def best_overlaps(proposals: np.ndarray, gt_boxes: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Best IoU of each ground truth among the first ``N`` proposals, for every ``N`` in ``counts``.

    Args:
        proposals: ``(P, 4)`` xyxy, in ranking order.
        gt_boxes: ``(G, 4)`` xyxy.
        counts: the ``N`` values.

    Returns:
        ``(G, len(counts))`` float64; column ``j`` uses ``min(counts[j], P)`` proposals.
    """
    g = len(gt_boxes)
    out = np.zeros((g, len(counts)), dtype=np.float64)
    p = len(proposals)
    if g == 0 or p == 0:
        return out
    iou = box_iou(torch.as_tensor(gt_boxes, dtype=torch.float64),
                  torch.as_tensor(np.asarray(proposals), dtype=torch.float64)).numpy()  # (G, P)
    running = np.maximum.accumulate(iou, axis=1)  # [:, n-1] = best over the first n proposals
    for j, n in enumerate(counts):
        out[:, j] = running[:, min(int(n), p) - 1]
    return out


def proposal_recall(
    proposals: Mapping[int, np.ndarray],
    data: DetectionData,
    *,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    counts: Sequence[int] = (10, 50, 100, 300, 500, 1000, 2000),
) -> dict:
    """Recall and MABO of ranked proposals against ``data``'s ground truth (module docstring).

    Args:
        proposals: ``{image_id: (P, 4)}`` xyxy boxes in original-image coordinates, best first; must
            cover every image of ``data``.
        data: the split (its non-difficult, non-crowd boxes are the ground truth).
        iou_thresholds: the ``t`` of recall@t.
        counts: numbers of proposals per image ``N``; an image with fewer uses all of its own.

    Returns:
        ``{"num_images", "num_gt", "mean_proposals", "iou_thresholds", "counts", "rows"}``; ``rows``
        has one dict per count and a last one for all proposals (``"count": "all"``), each
        ``{"count", "recall": {"0.5": r, ...}, "mabo", "abo", "class_abo": {class: abo}}``.

    Raises:
        ValueError: proposals missing for images of ``data``, or malformed.
    """
    missing = [r.name or str(r.image_id) for r in data.records if r.image_id not in proposals]
    if missing:
        raise ValueError(f"{data.name}: no proposals for {len(missing)} of {len(data.records)} images "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    counts = [int(n) for n in counts]
    if any(n < 1 for n in counts):
        raise ValueError(f"proposal_recall: counts must be positive, got {counts}")
    max_p = max((len(proposals[r.image_id]) for r in data.records), default=0)
    all_counts = counts + [max(max_p, 1)]  # the last column: every proposal

    best, labels, sizes = [], [], []
    for r in data.records:
        props = np.asarray(proposals[r.image_id], dtype=np.float32).reshape(-1, 4)
        sizes.append(len(props))
        keep = ~(r.difficult | r.iscrowd)
        best.append(best_overlaps(props, r.boxes[keep], all_counts))
        labels.append(r.labels[keep])
    best_all = np.concatenate(best) if best else np.zeros((0, len(all_counts)))
    label_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)

    rows = []
    for j, n in enumerate(counts + ["all"]):
        col = best_all[:, j]
        class_abo = {data.class_names[c]: float(col[label_all == c].mean())
                     for c in range(data.num_classes) if (label_all == c).any()}
        rows.append({
            "count": n,
            "recall": {f"{t:g}": float((col >= t).mean()) if len(col) else float("nan") for t in iou_thresholds},
            "mabo": float(np.mean(list(class_abo.values()))) if class_abo else float("nan"),
            "abo": float(col.mean()) if len(col) else float("nan"),
            "class_abo": class_abo,
        })
    return {
        "num_images": len(data.records),
        "num_gt": int(len(best_all)),
        "mean_proposals": float(np.mean(sizes)) if sizes else 0.0,
        "iou_thresholds": [float(t) for t in iou_thresholds],
        "counts": counts,
        "rows": rows,
    }
