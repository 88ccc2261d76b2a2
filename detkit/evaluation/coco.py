"""COCO box metrics through pycocotools' ``COCOeval`` (Lin et al., "Microsoft COCO", ECCV 2014).

Any ``DetectionData`` is scored this way, VOC sets too: the ground truth is turned into a COCO
ground-truth dict in memory, with VOC ``difficult`` objects marked ``iscrowd`` so that COCOeval
ignores detections on them (its counterpart of "neither rewarded nor penalised"), and the
detections into the COCO results list (``category_id`` from ``data.category_ids``).

The twelve numbers of ``COCOeval.summarize()`` are returned by name: ``AP`` (mean over IoU
0.50:0.05:0.95), ``AP50``, ``AP75``, ``APs`` / ``APm`` / ``APl`` (small < 32², medium, large > 96²
pixels of area), ``AR1`` / ``AR10`` / ``AR100`` (recall with at most 1/10/100 detections per image)
and ``ARs`` / ``ARm`` / ``ARl``. As in COCOeval, a metric with no ground truth to measure (an
area range with no objects) is ``-1``.
"""
from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.data.convert import to_coco_dict
from detkit.data.record import DetectionData
from detkit.evaluation.detections import to_coco_results

__all__ = ["COCO_METRICS", "evaluate_coco", "format_coco_table"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

Detections = dict[int, dict[str, np.ndarray]]


def evaluate_coco(
    detections: Detections,
    data: DetectionData,
    *,
    verbose: bool = False,
    return_text: bool = False,
):
    """COCO bbox metrics of ``detections`` (``{image_id: {"boxes" (D,4) xyxy original-image
    coords, "scores" (D,), "labels" (D,) 0..K-1}}``) against ``data``.

    pycocotools prints as it works; that output is captured. ``verbose=True`` prints it to
    stdout afterwards; ``return_text=True`` returns ``(metrics, text)`` instead of ``metrics``.
    Zero detections give AP/AR 0 (-1 where there is no ground truth), not an error.
    """
    results = to_coco_results(detections, data, with_file_name=False)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        gt = COCO()
        gt.dataset = to_coco_dict(data, difficult_as_crowd=True)
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            # loadRes indexes results[0]; an empty result set is built by hand instead.
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    text = buf.getvalue()
    if verbose:
        sys.stdout.write(text)
    metrics = {name: float(v) for name, v in zip(COCO_METRICS, ev.stats)}
    return (metrics, text) if return_text else metrics


def format_coco_table(metrics: dict[str, float]) -> str:
    """The twelve metrics as a two-column table (``-1`` shown as ``n/a``)."""
    lines = []
    for name in COCO_METRICS:
        v = metrics[name]
        lines.append(f"{name:<6} {'   n/a' if v < 0 else f'{v:6.4f}'}")
    return "\n".join(lines)
