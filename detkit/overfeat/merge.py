"""OverFeat's greedy box merging (§4.3), used instead of non-maximum suppression.

The paper, per class, over the boxes predicted at all scales and offsets::

    repeat:  (b1*, b2*) = argmin_{b1 != b2} match_score(b1, b2)
             if match_score(b1*, b2*) > t: stop
             B <- B \\ {b1*, b2*}  U  box_merge(b1*, b2*)

"match_score uses the sum of the distance between centers of the two bounding boxes and the
intersection area of the boxes"; "box_merge computes the average of the bounding boxes'
coordinates"; the merged box's confidence is the **sum** of the class scores of the windows it
came from (boxes supported by many windows, offsets and scales win: a vote).

The paper gives no normalisation, and a raw pixel distance plus a raw area cannot be compared to
one threshold across scales. detkit makes both terms dimensionless and zero for identical boxes::

    match_score = |c1 - c2| / ((sqrt(area1) + sqrt(area2)) / 2)  +  (1 - IoU(b1, b2))

so two boxes that overlap well and lie close score near 0, and two disjoint boxes score at least
1 (never merged with ``t < 1``). The overlap term is the IoU, not the intersection over the
smaller box: with the latter a small box inside a large one (a window on part of an object) scores
0 and is merged, clusters absorb their neighbours' parts and their means shrink (measured on
raccoon: VOC07 mAP 0.05 with it, 0.19 with the IoU (0.33 ranking by the best member), same
weights; docs/overfeat.md).
``box_merge`` averages the coordinates of *all* boxes merged so far (count-weighted: merging a
merged box with a new one is the mean of every member, which pairwise averaging would not be), or
weights them by score with ``weighting="score"``.

The merged box's confidence is the sum of its members' scores (``confidence="sum"``, the paper's
vote) or their maximum (``confidence="max"``). The vote favours clusters with many members, and the
member count depends on more than the evidence: a fine scale has many more windows than a coarse
one, and an object cut by the image border gets fewer; ``max`` ranks by the best window alone.

Plain per-class NMS (``torchvision.ops.batched_nms``) is available through
:func:`merge_detections` for comparison.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["match_score", "greedy_merge", "merge_detections"]


def match_score(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``(A, 4)`` and ``(B, 4)`` xyxy boxes -> ``(A, B)`` match scores (lower = better match)."""
    b1, b2 = boxes1.float(), boxes2.float()
    area1 = ((b1[:, 2] - b1[:, 0]).clamp(min=0) * (b1[:, 3] - b1[:, 1]).clamp(min=0))
    area2 = ((b2[:, 2] - b2[:, 0]).clamp(min=0) * (b2[:, 3] - b2[:, 1]).clamp(min=0))
    c1 = (b1[:, :2] + b1[:, 2:]) / 2
    c2 = (b2[:, :2] + b2[:, 2:]) / 2
    dist = torch.cdist(c1, c2)
    size = (area1.sqrt()[:, None] + area2.sqrt()[None, :]) / 2
    lt = torch.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = torch.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    tiny = torch.finfo(torch.float32).tiny
    union = (area1[:, None] + area2[None, :] - inter).clamp(min=tiny)
    return dist / size.clamp(min=tiny) + (1 - inter / union)


def greedy_merge(boxes: Tensor, scores: Tensor, *, threshold: float = 0.5, weighting: str = "mean",
                 confidence: str = "sum") -> tuple[Tensor, Tensor, Tensor]:
    """Greedily merge the boxes of **one class** until no pair scores ``<= threshold``.

    Args:
        boxes: ``(D, 4)`` xyxy; scores: ``(D,)`` class confidences.
        threshold: ``t``; the best pair is merged while its :func:`match_score` is ``<= t``.
        weighting: ``"mean"`` (the paper's average of coordinates) or ``"score"``.
        confidence: ``"sum"`` (the paper's accumulated class scores) or ``"max"`` of the members.

    Returns:
        merged boxes ``(D', 4)``, their confidences ``(D',)`` (sum or max of the members' scores),
        and ``members`` ``(D,)`` int64: for each input box, the output row it ended up in.
    """
    if weighting not in ("mean", "score"):
        raise ValueError(f"merge.py: weighting must be 'mean' or 'score', got {weighting!r}")
    if confidence not in ("sum", "max"):
        raise ValueError(f"merge.py: confidence must be 'sum' or 'max', got {confidence!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"merge.py: expected boxes (D, 4) and scores (D,), got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    d = boxes.shape[0]
    boxes, scores = boxes.float(), scores.float()
    weight = scores.clone() if weighting == "score" else torch.ones_like(scores)
    weight = weight.clamp(min=torch.finfo(torch.float32).tiny)
    sums = boxes * weight[:, None]     # weighted coordinate sums of each cluster
    current = boxes.clone()
    total = scores.clone()
    owner = torch.arange(d, device=boxes.device)  # cluster representative of each input box
    alive = torch.ones(d, dtype=torch.bool, device=boxes.device)
    inf = torch.tensor(float("inf"), device=boxes.device)
    score = match_score(current, current)
    score.fill_diagonal_(float("inf"))
    # One merge per iteration, as the paper: the pair matrix is updated in O(D) per merge
    # (one row and column) instead of being recomputed.
    for _ in range(max(d - 1, 0)):
        flat = int(torch.argmin(score))
        i, j = divmod(flat, d)
        if not bool(score[i, j] <= threshold):
            break
        sums[i] += sums[j]
        weight[i] += weight[j]
        total[i] = total[i] + total[j] if confidence == "sum" else torch.maximum(total[i], total[j])
        current[i] = sums[i] / weight[i]
        owner[owner == j] = i
        alive[j] = False
        score[j, :] = inf
        score[:, j] = inf
        row = match_score(current[i:i + 1], current)[0]
        row = torch.where(alive, row, inf)
        row[i] = inf
        score[i, :] = row
        score[:, i] = row
    keep = torch.nonzero(alive).squeeze(1)
    remap = torch.full((d,), -1, dtype=torch.int64, device=boxes.device)
    remap[keep] = torch.arange(keep.numel(), device=boxes.device)
    return current[keep], total[keep], remap[owner]


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, *, method: str = "greedy",
                     merge_threshold: float = 0.5, nms_thresh: float = 0.3, weighting: str = "mean",
                     confidence: str = "sum", max_detections: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """Post-process one image's ``(D, 4)`` boxes, ``(D,)`` scores, ``(D,)`` labels, class by class.

    ``method="greedy"``: :func:`greedy_merge` per class (boxes of different classes are never
    merged; ``confidence``: their scores summed or their maximum). ``method="nms"``:
    ``torchvision.ops.batched_nms`` with IoU ``nms_thresh``. Returns the best ``max_detections``
    as ``(boxes, scores, labels)``.
    """
    if method not in ("greedy", "nms"):
        raise ValueError(f"merge.py: method must be 'greedy' or 'nms', got {method!r}")
    if method == "nms":
        keep = batched_nms(boxes.float(), scores.float(), labels, float(nms_thresh))
        out_b, out_s, out_l = boxes[keep].float(), scores[keep].float(), labels[keep]
    else:
        parts_b, parts_s, parts_l = [], [], []
        for c in torch.unique(labels).tolist():
            sel = labels == c
            b, s, _ = greedy_merge(boxes[sel], scores[sel], threshold=merge_threshold, weighting=weighting,
                                    confidence=confidence)
            parts_b.append(b)
            parts_s.append(s)
            parts_l.append(torch.full((b.shape[0],), c, dtype=torch.int64, device=boxes.device))
        if parts_b:
            out_b, out_s, out_l = torch.cat(parts_b), torch.cat(parts_s), torch.cat(parts_l)
        else:
            out_b = boxes.new_zeros((0, 4), dtype=torch.float32)
            out_s = scores.new_zeros((0,), dtype=torch.float32)
            out_l = labels.new_zeros((0,), dtype=torch.int64)
    order = torch.argsort(out_s, descending=True)[:max_detections]
    return out_b[order], out_s[order], out_l[order].to(torch.int64)
