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

import heapq

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["match_score", "greedy_merge", "merge_detections"]


def _match(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """:func:`match_score` on float64 arrays: ``(A, 4)``, ``(B, 4)`` -> ``(A, B)``."""
    area1 = np.clip(b1[:, 2] - b1[:, 0], 0, None) * np.clip(b1[:, 3] - b1[:, 1], 0, None)
    area2 = np.clip(b2[:, 2] - b2[:, 0], 0, None) * np.clip(b2[:, 3] - b2[:, 1], 0, None)
    c1 = (b1[:, :2] + b1[:, 2:]) / 2
    c2 = (b2[:, :2] + b2[:, 2:]) / 2
    dist = np.sqrt(((c1[:, None, :] - c2[None, :, :]) ** 2).sum(-1))
    size = (np.sqrt(area1)[:, None] + np.sqrt(area2)[None, :]) / 2
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    tiny = np.finfo(np.float64).tiny
    union = np.maximum(area1[:, None] + area2[None, :] - inter, tiny)
    return dist / np.maximum(size, tiny) + (1 - inter / union)


def match_score(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``(A, 4)`` and ``(B, 4)`` xyxy boxes -> ``(A, B)`` match scores (lower = better match),
    float32 on ``boxes1``'s device (computed in float64 on the host, as :func:`greedy_merge` does)."""
    out = _match(boxes1.detach().double().cpu().numpy(), boxes2.detach().double().cpu().numpy())
    return torch.from_numpy(out).to(device=boxes1.device, dtype=torch.float32)


def greedy_merge(boxes: Tensor, scores: Tensor, *, threshold: float = 0.5, weighting: str = "mean",
                 confidence: str = "sum") -> tuple[Tensor, Tensor, Tensor]:
    """Greedily merge the boxes of **one class** until no pair scores ``<= threshold``.

    Args:
        boxes: ``(D, 4)`` xyxy; scores: ``(D,)`` class confidences.
        threshold: ``t``; the best pair is merged while its :func:`match_score` is ``<= t``
            (ties: the pair of lowest indices first).
        weighting: ``"mean"`` (the paper's average of coordinates) or ``"score"``.
        confidence: ``"sum"`` (the paper's accumulated class scores) or ``"max"`` of the members.

    Returns:
        merged boxes ``(D', 4)``, their confidences ``(D',)`` (sum or max of the members' scores),
        and ``members`` ``(D,)`` int64: for each input box, the output row it ended up in; on
        ``boxes``' device.
    """
    if weighting not in ("mean", "score"):
        raise ValueError(f"greedy_merge: weighting must be 'mean' or 'score', got {weighting!r}")
    if confidence not in ("sum", "max"):
        raise ValueError(f"greedy_merge: confidence must be 'sum' or 'max', got {confidence!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"greedy_merge: expected boxes (D, 4) and scores (D,), got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    # Each merge moves one cluster's box and so changes its matches: the loop is sequential and
    # done on the host (one transfer, no device sync per merge). A heap holds the pairs that can
    # still merge (match <= t), so a merge costs one row of matches, not a scan of all D x D pairs;
    # entries of clusters changed since they were pushed are skipped when popped.
    device, d = boxes.device, boxes.shape[0]
    cur = boxes.detach().double().cpu().numpy().copy()
    total = scores.detach().double().cpu().numpy().copy()
    weight = total.copy() if weighting == "score" else np.ones(d)
    weight = np.maximum(weight, np.finfo(np.float64).tiny)
    sums = cur * weight[:, None]          # weighted coordinate sums of each cluster
    owner = np.arange(d)                  # cluster of each input box
    alive = np.ones(d, dtype=bool)
    version = np.zeros(d, dtype=np.int64)
    t = float(threshold)
    if d > 1:
        m = _match(cur, cur)
        i, j = np.triu_indices(d, 1)
        close = m[i, j] <= t
        heap = [(float(s), int(a), int(b), 0, 0) for s, a, b in zip(m[i, j][close], i[close], j[close])]
        heapq.heapify(heap)
    else:
        heap = []
    while heap:
        _, i, j, vi, vj = heapq.heappop(heap)
        if not (alive[i] and alive[j]) or version[i] != vi or version[j] != vj:
            continue  # a cluster merged or moved since this pair was pushed
        sums[i] += sums[j]                # i < j: the merged cluster keeps the lower index
        weight[i] += weight[j]
        total[i] = total[i] + total[j] if confidence == "sum" else max(total[i], total[j])
        cur[i] = sums[i] / weight[i]
        owner[owner == j] = i
        alive[j] = False
        version[i] += 1
        others = np.flatnonzero(alive)
        others = others[others != i]
        if others.size:
            row = _match(cur[i:i + 1], cur[others])[0]
            for k, s in zip(others[row <= t].tolist(), row[row <= t].tolist()):
                a, b = (i, k) if i < k else (k, i)
                heapq.heappush(heap, (s, a, b, int(version[a]), int(version[b])))
    keep = np.flatnonzero(alive)
    remap = np.full(d, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    return (torch.from_numpy(cur[keep]).to(device=device, dtype=torch.float32),
            torch.from_numpy(total[keep]).to(device=device, dtype=torch.float32),
            torch.from_numpy(remap[owner]).to(device))


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
        raise ValueError(f"merge_detections: method must be 'greedy' or 'nms', got {method!r}")
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
