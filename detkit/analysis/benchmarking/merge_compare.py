"""OverFeat's post-processing compared on the same candidates: greedy merging (the paper's summed
confidences, or the best member's, at several match thresholds) against NMS, each scored by
VOC07 mAP on one data set split (``tools/compare_merges.py``; docs/overfeat.md).

OverFeat's test cost is its dense passes (about a second per image on a 2-core CPU at three
scales); the merge is milliseconds. So :func:`dense_candidates` runs the network once per image
and keeps what :meth:`OverFeat.detect` hands to the merge, and :func:`compare_merges` re-merges
those candidates once per variant. Re-testing a checkpoint once per setting (the experiment
suites' ``init_from`` runs) gives the same numbers, at the cost of a dense pass each.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from detkit.data.dataset import collate_detections
from detkit.engine.evaluator import detection_entry, score_detections
from detkit.overfeat.merge import merge_detections

__all__ = ["DEFAULT_VARIANTS", "variant_name", "require_overfeat", "dense_candidates", "compare_merges", "format_rows"]

# NMS at the two usual thresholds; greedy merging at three match thresholds with each confidence.
DEFAULT_VARIANTS: tuple[dict[str, Any], ...] = (
    {"method": "nms", "nms_thresh": 0.3},
    {"method": "nms", "nms_thresh": 0.5},
    *({"method": "greedy", "merge_threshold": t, "confidence": c} for t in (0.3, 0.5, 0.7) for c in ("sum", "max")),
)

Candidates = dict[int, tuple[Tensor, Tensor, Tensor, dict]]


def variant_name(variant: Mapping[str, Any]) -> str:
    """``{"method": "nms", "nms_thresh": 0.3}`` -> ``"nms@0.3"``; greedy -> ``"greedy-sum@0.5"``
    (``-score`` appended for score-weighted box means)."""
    if variant.get("method") == "nms":
        return f"nms@{variant.get('nms_thresh', 0.3)}"
    name = f"greedy-{variant.get('confidence', 'sum')}@{variant.get('merge_threshold', 0.5)}"
    return name + ("-score" if variant.get("weighting") == "score" else "")


def require_overfeat(model: nn.Module, *, source: str = "merge_compare.py") -> None:
    """``TypeError`` unless ``model`` is an OverFeat detector (has :meth:`OverFeat.candidates`)."""
    if not callable(getattr(model, "candidates", None)):
        raise TypeError(f"{source}: {type(model).__name__} is not an OverFeat detector "
                        "(no candidates(); only OverFeat merges dense windows: train with method=overfeat)")


@torch.no_grad()
def dense_candidates(model: nn.Module, dataset, *, device: torch.device | str = "cpu",
                     progress: bool = True) -> Candidates:
    """``image_id -> (boxes (D, 4), scores (D,), labels (D,), target)`` for every image of a
    ``DetectionDataset``, from :meth:`OverFeat.candidates` (one image per pass, boxes in the
    dataset's resized coordinates, kept on the CPU)."""
    require_overfeat(model)
    device = torch.device(device)
    model.eval().to(device)
    out: Candidates = {}
    for i in tqdm(range(len(dataset)), desc="dense passes", unit="img", disable=not progress):
        image, target = dataset[i]
        batch, _ = collate_detections([(image, target)])
        images, image_hw = model.preprocess(batch.to(device))
        boxes, scores, labels = model.candidates(images, image_hw)[0]
        out[int(target["image_id"])] = (boxes.cpu(), scores.cpu(), labels.cpu(), target)
    return out


def compare_merges(candidates: Candidates, data, variants: Iterable[Mapping[str, Any]] = DEFAULT_VARIANTS, *,
                   max_detections: int = 100) -> list[dict[str, Any]]:
    """Merge the same candidates with each variant (keywords of :func:`merge_detections`) and score
    the result against ``data`` (a ``DetectionData``) by the VOC rules.

    Returns one row per variant: ``name``, the variant's keywords, ``voc07_mAP``, ``voc12_mAP``,
    ``voc07_ap`` (per class), ``detections_per_image`` and ``merge_ms_per_image``.
    """
    rows = []
    for variant in variants:
        variant = dict(variant)
        dets, count, t0 = {}, 0, time.perf_counter()
        for image_id, (boxes, scores, labels, target) in candidates.items():
            b, s, lab = merge_detections(boxes, scores, labels, max_detections=max_detections, **variant)
            dets[image_id] = detection_entry({"boxes": b, "scores": s, "labels": lab}, target)
            count += int(s.numel())
        seconds = time.perf_counter() - t0
        scores = score_detections(dets, data, coco=False)
        n = max(len(candidates), 1)
        per_class = {k: c["ap"] for k, c in scores["voc07"]["per_class"].items()}
        rows.append({"name": variant_name(variant), **variant, "voc07_mAP": scores["voc07"]["mAP"],
                     "voc12_mAP": scores["voc12"]["mAP"], "voc07_ap": per_class,
                     "detections_per_image": count / n, "merge_ms_per_image": 1000.0 * seconds / n})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A GitHub-markdown table of :func:`compare_merges`' rows (best VOC07 mAP marked)."""
    best = max((r["voc07_mAP"] for r in rows), default=None)
    lines = ["| post-processing | VOC07 mAP | VOC12 mAP | detections/img | merge ms/img |", "|---|---|---|---|---|"]
    for r in rows:
        mark = " **(best)**" if r["voc07_mAP"] == best else ""
        lines.append(f"| {r['name']}{mark} | {r['voc07_mAP']:.3f} | {r['voc12_mAP']:.3f} | "
                     f"{r['detections_per_image']:.1f} | {r['merge_ms_per_image']:.1f} |")
    return "\n".join(lines)
