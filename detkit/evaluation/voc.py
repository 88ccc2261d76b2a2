"""Pascal VOC average precision, by the rules of the VOC devkit (``VOCevaldet.m`` / ``VOCap.m``).

The rules, per class (Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010):

1. All detections of the class, over all images, are sorted by descending score. The sort is
   stable: ties keep the order of ``data.records`` and, within an image, the detection order.
2. Each detection, in that order, is compared with the ground truth of its class in its image.
   It is assigned to the ground truth of **highest overlap** (IoU, computed with the devkit's "+1"
   pixel rule, below), whether or not that one is already matched.
3. If that overlap is ``> iou_threshold`` (strictly, as in the py-faster-rcnn port; the MATLAB
   devkit writes ``>=``, which differs only when an IoU is exactly 0.5):
   the assigned ground truth is *difficult* -> the detection is ignored (neither TP nor FP);
   it is not yet matched -> true positive, and it becomes matched; already matched -> false
   positive (a duplicate detection). Otherwise the detection is a false positive.
4. ``npos`` counts the non-difficult ground truth; recall = cumTP / npos, precision =
   cumTP / (cumTP + cumFP).
5. AP: VOC2007 11-point (:func:`voc_ap` with ``use_07_metric=True``) or VOC2010+ area.

Objects with ``iscrowd`` (COCO data scored the VOC way) are treated as difficult.

The "+1" rule. The devkit works on 1-based *inclusive* pixel indices, so a box
``(xmin, ..., xmax)`` is ``xmax - xmin + 1`` pixels wide and the intersection width is
``min(xmax) - max(xmin) + 1``. detkit stores 0-based continuous boxes, ``x0 = xmin - 1``,
``x1 = xmax`` (``detkit.data.record``). We convert back to ``(x0 + 1, y0 + 1, x1, y1)`` and apply
the devkit formula literally; algebraically ``xmax - xmin + 1 = x1 - x0`` and
``min(xmax) - max(xmin) + 1 = min(x1) - max(x0)``, so this *is* the plain IoU of the continuous
boxes (``tests/evaluation/test_voc.py`` checks both against ``torchvision.ops.box_iou``).

Why no library: pycocotools matches each detection to the best *unmatched* ground truth and
interpolates precision at 101 points; neither is the VOC rule, so VOC numbers need this code.

Vectorisation: because rule 2 assigns a detection to its best-overlap ground truth regardless of
what is already matched, the assignment needs no loop; "first detection to claim a ground truth
is the TP" is then ``np.unique(..., return_index=True)`` over the score-sorted assignments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from detkit.data.record import DetectionData

Detections = dict[int, dict[str, np.ndarray]]

# Entries of the per-detection (D, G) overlap matrix computed at once; bounds memory on big sets.
_CHUNK_ELEMENTS = 1 << 20


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision from a precision/recall curve (the devkit's ``VOCevaldet``/``VOCap``).

    Args:
        recall: ``(D,)`` cumulative recall after each score-sorted detection (non-decreasing).
        precision: ``(D,)`` matching precision.
        use_07_metric: VOC2007 11-point interpolated AP: the mean over ``t = 0, 0.1, ..., 1`` of
            the maximum precision at recall ``>= t`` (0 where no recall reaches ``t``). Otherwise
            the VOC2010+ area: precision made monotone (each point takes the maximum precision at
            any higher recall), summed over the recall steps.

    The thresholds are ``np.arange(0., 1.1, 0.1)`` as in the py-faster-rcnn port, float
    rounding included (its 0.3 is ``0.30000000000000004``, so a recall of exactly 0.3 does not
    count for ``t = 0.3``); the MATLAB ``0:0.1:1`` has the same 0.3 and differs at 0.6 and 0.7.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"recall {recall.shape} and precision {precision.shape} differ in length")
    if use_07_metric:
        # Summed, then divided once: the devkit's running ``ap + p / 11`` gives 1.0000000000000002
        # for a perfect detector; this differs from it by rounding only and stays within [0, 1].
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0.0, 1.1, 0.1)]
        return float(sum(points) / 11.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def devkit_overlaps(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU by the devkit's "+1" rule, broadcasting ``boxes (..., 4)`` against ``gt (..., 4)``.

    Both are detkit 0-based continuous xyxy boxes; they are converted to the devkit's 1-based
    inclusive indices first (module docstring). A zero union gives overlap 0.
    """
    b = np.asarray(boxes, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    bx0, by0, bx1, by1 = b[..., 0] + 1.0, b[..., 1] + 1.0, b[..., 2], b[..., 3]
    gx0, gy0, gx1, gy1 = g[..., 0] + 1.0, g[..., 1] + 1.0, g[..., 2], g[..., 3]
    iw = np.maximum(np.minimum(bx1, gx1) - np.maximum(bx0, gx0) + 1.0, 0.0)
    ih = np.maximum(np.minimum(by1, gy1) - np.maximum(by0, gy0) + 1.0, 0.0)
    inter = iw * ih
    union = (bx1 - bx0 + 1.0) * (by1 - by0 + 1.0) + (gx1 - gx0 + 1.0) * (gy1 - gy0 + 1.0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


@dataclass
class VOCResult:
    """Per-class VOC AP and curves.

    Attributes:
        class_names: ``K`` names.
        ap: ``(K,)`` AP per class; NaN for a class with no non-difficult ground truth (recall is
            undefined there), which is left out of :attr:`map`.
        recall, precision: ``K`` arrays ``(D_k,)``, one point per score-sorted detection of the
            class (empty without detections; recall NaN where ``npos`` is 0).
        npos: ``(K,)`` non-difficult ground-truth count.
        num_detections: ``(K,)`` detections scored per class.
        iou_threshold, use_07_metric: the settings used.
    """

    class_names: list[str]
    ap: np.ndarray
    recall: list[np.ndarray]
    precision: list[np.ndarray]
    npos: np.ndarray
    num_detections: np.ndarray
    iou_threshold: float = 0.5
    use_07_metric: bool = True
    metric_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric_name = "VOC07 11-point" if self.use_07_metric else "VOC10+ area"

    @property
    def map(self) -> float:
        """Mean AP over classes that have non-difficult ground truth (NaN if none has)."""
        valid = ~np.isnan(self.ap)
        return float(self.ap[valid].mean()) if valid.any() else math.nan

    def to_dict(self) -> dict:
        """JSON-ready summary (NaN written as ``None``)."""

        def num(x: float):
            return None if math.isnan(x) else float(x)

        return {
            "metric": self.metric_name,
            "iou_threshold": self.iou_threshold,
            "mAP": num(self.map),
            "per_class": {
                name: {"ap": num(float(self.ap[k])), "npos": int(self.npos[k]),
                       "num_detections": int(self.num_detections[k])}
                for k, name in enumerate(self.class_names)
            },
        }


def _check_detections(detections: Detections, data: DetectionData) -> None:
    known = {r.image_id for r in data.records}
    for image_id, det in detections.items():
        if image_id not in known:
            raise ValueError(f"detections for image_id {image_id}, which is not in {data.name or 'the data'}")
        for key in ("boxes", "scores", "labels"):
            if key not in det:
                raise ValueError(f"detections of image_id {image_id} lack {key!r}")
        n = len(np.asarray(det["scores"]).reshape(-1))
        if np.asarray(det["boxes"]).reshape(-1, 4).shape[0] != n or np.asarray(det["labels"]).reshape(-1).size != n:
            raise ValueError(f"detections of image_id {image_id}: boxes, scores and labels differ in length")
        labels = np.asarray(det["labels"]).reshape(-1)
        if n and (labels.min() < 0 or labels.max() >= data.num_classes):
            raise ValueError(
                f"detections of image_id {image_id}: label outside 0..{data.num_classes - 1}")


def _class_arrays(detections: Detections, data: DetectionData, k: int):
    """Ground truth of class ``k`` padded per image, and its detections in record order.

    Returns ``gt (I, G, 4)``, ``gt_valid (I, G)``, ``gt_ignore (I, G)``, ``npos``,
    ``det_boxes (D, 4)``, ``det_scores (D,)``, ``det_image (D,)`` (record index).
    """
    per_image = []
    for r in data.records:
        m = r.labels == k
        per_image.append((r.boxes[m], (r.difficult | r.iscrowd)[m]))
    num_gt = max((len(b) for b, _ in per_image), default=0)
    n_img = len(per_image)
    gt = np.zeros((n_img, max(num_gt, 1), 4), dtype=np.float64)
    valid = np.zeros((n_img, max(num_gt, 1)), dtype=bool)
    ignore = np.zeros_like(valid)
    for i, (b, d) in enumerate(per_image):
        gt[i, : len(b)] = b
        valid[i, : len(b)] = True
        ignore[i, : len(b)] = d
    npos = int((valid & ~ignore).sum())

    boxes, scores, images = [], [], []
    for i, r in enumerate(data.records):
        det = detections.get(r.image_id)
        if det is None:
            continue
        m = np.asarray(det["labels"]).reshape(-1) == k
        if m.any():
            boxes.append(np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)[m])
            scores.append(np.asarray(det["scores"], dtype=np.float64).reshape(-1)[m])
            images.append(np.full(int(m.sum()), i, dtype=np.int64))
    if boxes:
        return gt, valid, ignore, npos, np.concatenate(boxes), np.concatenate(scores), np.concatenate(images)
    return gt, valid, ignore, npos, np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64)


def _tp_fp(gt, valid, ignore, boxes, images, iou_threshold):
    """TP/FP flags ``(D,)`` for score-sorted detections of one class (rules 2-3)."""
    d, g = len(boxes), gt.shape[1]
    ovmax = np.full(d, -np.inf)
    jmax = np.zeros(d, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // g)
    for s in range(0, d, step):
        img = images[s : s + step]
        ov = devkit_overlaps(boxes[s : s + step, None, :], gt[img])  # (d, G)
        ov = np.where(valid[img], ov, -np.inf)
        jmax[s : s + step] = ov.argmax(axis=1)  # first maximum, like the devkit's strict ``>``
        ovmax[s : s + step] = ov.max(axis=1)
    hit = ovmax > iou_threshold
    hit_ignored = hit & ignore[images, jmax]
    claim = hit & ~hit_ignored
    tp = np.zeros(d, dtype=bool)
    claim_idx = np.flatnonzero(claim)
    gt_key = images[claim_idx] * g + jmax[claim_idx]
    _, first = np.unique(gt_key, return_index=True)  # earliest (highest-scored) claim wins
    tp[claim_idx[first]] = True
    fp = ~hit | (claim & ~tp)
    return tp, fp


def evaluate_voc(
    detections: Detections,
    data: DetectionData,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> VOCResult:
    """Score detections against a data set by the VOC devkit rules (module docstring).

    Args:
        detections: ``{image_id: {"boxes": (D, 4) xyxy 0-based continuous coords of the original
            image, "scores": (D,), "labels": (D,) int64 in 0..K-1}}``; images may be missing
            (no detections); ids must belong to ``data``.
        data: ground truth; ``difficult`` (and ``iscrowd``) objects are ignored.
        iou_threshold: overlap a match must exceed (strictly).
        use_07_metric: VOC2007 11-point AP (default) or VOC2010+ area AP.
    """
    _check_detections(detections, data)
    k_classes = data.num_classes
    ap = np.full(k_classes, math.nan)
    recalls, precisions = [], []
    npos_all = np.zeros(k_classes, dtype=np.int64)
    ndet_all = np.zeros(k_classes, dtype=np.int64)
    for k in range(k_classes):
        gt, valid, ignore, npos, boxes, scores, images = _class_arrays(detections, data, k)
        order = np.argsort(-scores, kind="stable")
        tp, fp = _tp_fp(gt, valid, ignore, boxes[order], images[order], iou_threshold)
        ctp = np.cumsum(tp, dtype=np.float64)
        cfp = np.cumsum(fp, dtype=np.float64)
        precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        if npos > 0:
            recall = ctp / npos
            ap[k] = voc_ap(recall, precision, use_07_metric)
        else:
            recall = np.full(len(ctp), math.nan)
        recalls.append(recall)
        precisions.append(precision)
        npos_all[k] = npos
        ndet_all[k] = len(scores)
    return VOCResult(list(data.class_names), ap, recalls, precisions, npos_all, ndet_all,
                     iou_threshold=iou_threshold, use_07_metric=use_07_metric)


def format_voc_table(result: VOCResult) -> str:
    """A per-class table (AP, ground truth count, detections) followed by the mAP line."""
    width = max([len("class"), *(len(n) for n in result.class_names)])
    lines = [f"{'class':<{width}}  {'AP':>6}  {'npos':>6}  {'dets':>7}", "-" * (width + 25)]
    for k, name in enumerate(result.class_names):
        ap = "   n/a" if math.isnan(result.ap[k]) else f"{result.ap[k]:6.4f}"
        lines.append(f"{name:<{width}}  {ap}  {int(result.npos[k]):>6}  {int(result.num_detections[k]):>7}")
    lines.append("-" * (width + 25))
    m = result.map
    lines.append(f"{'mAP':<{width}}  {'   n/a' if math.isnan(m) else f'{m:6.4f}'}  ({result.metric_name}, "
                 f"IoU > {result.iou_threshold:g})")
    return "\n".join(lines)
