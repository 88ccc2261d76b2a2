"""Anchor sizes fitted to a data set's boxes (``method.model.anchor_sizes=auto``).

The paper's 128², 256², 512² anchors suit Pascal objects at a 600 px scale; a data set of blood
cells or of small parts needs others. :func:`fit_anchor_sizes` spans the boxes the detector will
see in training, ``sqrt(w * h)`` after the training resize, from a low to a high percentile by a
geometric series whose ratio is at most 2, the spacing of the paper's sizes (a square object
between two such sizes overlaps the nearer anchor by IoU >= 0.5, and the RPN's "best anchor of
each ground truth" rule makes that one positive). Written here because no library fits anchors
to a set: torchvision and detectron2 take them as given.
"""
from __future__ import annotations

import math

import numpy as np

from detkit.data.transforms import fast_rcnn_scale


def box_sides(data, *, min_size, max_size: int) -> np.ndarray:
    """``sqrt(w * h)`` of every usable box of ``data`` (a ``DetectionData``) at the training scale:
    each image resized by the Fast R-CNN rule to the middle of ``min_size`` (a size or a list)."""
    sizes = sorted([min_size] if isinstance(min_size, (int, float)) else list(min_size))
    short = sizes[len(sizes) // 2]
    sides = []
    for r in data.records:
        if not len(r.boxes):
            continue
        scale = fast_rcnn_scale(r.height, r.width, short, max_size)
        wh = (r.boxes[:, 2:] - r.boxes[:, :2]).clip(min=0) * scale
        area = wh[:, 0] * wh[:, 1]
        sides.append(np.sqrt(area[(area > 0) & ~r.iscrowd]))
    return np.concatenate(sides) if sides else np.zeros(0)


def fit_anchor_sizes(sides: np.ndarray, *, low: float = 2.0, high: float = 98.0, max_ratio: float = 2.0,
                     smallest: float = 16.0, max_sizes: int = 6) -> list[float]:
    """Geometric anchor sizes from the ``low`` to the ``high`` percentile of ``sides`` (pixels).

    Args:
        sides: ``(B,)`` box sides ``sqrt(w * h)`` at the training scale (:func:`box_sides`).
        low, high: percentiles the smallest and largest anchor sit at.
        max_ratio: largest ratio between neighbouring sizes (2: the paper's spacing).
        smallest: no anchor below this (the trunk's stride: a smaller anchor has no cell of its own).
        max_sizes: at most this many sizes (the ratio grows beyond ``max_ratio`` if needed).

    Returns:
        sizes in increasing order, rounded to whole pixels; ``[128, 256, 512]`` when there is no box.

    Raises:
        ValueError: a bad setting.
    """
    if not 0 <= low < high <= 100 or max_ratio <= 1 or max_sizes < 1:
        raise ValueError(f"fit_anchor_sizes: need 0 <= low < high <= 100, max_ratio > 1 and max_sizes >= 1; "
                         f"got low={low}, high={high}, max_ratio={max_ratio}, max_sizes={max_sizes}")
    sides = np.asarray(sides, dtype=np.float64).reshape(-1)
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if not len(sides):
        return [128.0, 256.0, 512.0]
    lo = max(float(np.percentile(sides, low)), smallest)
    hi = max(float(np.percentile(sides, high)), lo)
    n = min(max_sizes, max(1, math.ceil(math.log(hi / lo) / math.log(max_ratio) - 1e-9) + 1))
    if n == 1:
        return [float(round(math.sqrt(lo * hi)))]
    return [float(round(lo * (hi / lo) ** (i / (n - 1)))) for i in range(n)]
