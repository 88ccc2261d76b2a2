"""What a lineage report measures on trained checkpoints: test time by phase, and proposal recall.

* :func:`time_phases` runs a checkpoint on a few test images, one image per call as a user's
  ``predictor(image)`` does, and splits each call into the benchmark's phases
  (:class:`~detkit.analysis.benchmarking.timing.PhaseTimer` with the method's own phase map,
  ``detkit.methods.*.phases``): trunk, proposals (the RPN), region head, post-processing, and
  ``other`` (resizing, normalisation, mapping boxes back). Methods that take selective search
  boxes get the boxes the evaluation used, so their network time excludes the search; the search's
  own time is the cache's per-image seconds (one core), reported as their ``proposals`` phase.
* :func:`proposal_recall_curves`: recall of selective search (the cache) and of a trained RPN
  against the number of proposals per image on the test split — the Faster R-CNN paper's figure.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from detkit.data.record import DetectionData

PHASES = ("proposals", "trunk", "region_head", "postprocess", "other")
RECALL_COUNTS = (10, 20, 50, 100, 200, 300, 500, 1000, 2000)


@torch.no_grad()
def time_phases(model: torch.nn.Module, transform, data: DetectionData, image_ids: Sequence[int], *,
                device: torch.device | str = "cpu", amp: str = "none",
                proposals: Mapping[int, np.ndarray] | None = None,
                search_seconds: Mapping[int, float] | None = None, warmup: int = 1) -> dict[str, Any]:
    """Mean milliseconds per image of each phase of ``model`` on the images ``image_ids``.

    Args:
        model: a trained detector in eval mode on ``device``; ``transform``: its test transform
            (``eval_transforms`` of its run config); ``amp``: the autocast its evaluation used.
            Each image is one call of ``detkit.engine.inference.detect``, what ``Predictor`` runs.
        data: the test split the images belong to.
        image_ids: the images timed, each once, after ``warmup`` untimed calls on the first one.
        proposals: ``{image_id: (P, 4)}`` original-pixel boxes for the methods that take them.
        search_seconds: ``{image_id: seconds}`` of the selective search that made ``proposals``
            (the cache's); their mean over every image of ``data`` is the ``proposals`` phase.

    Returns:
        ``{"phases_ms": {phase: ms}, "network_ms", "total_ms", "rois_per_image", "images",
        "proposal_source", "device", "amp"}``: ``network_ms`` is the call without a selective
        search (all phases but a search), ``total_ms`` with it; ``rois_per_image`` counts the regions
        the region head ran on (OverFeat: its dense windows).
    """
    from detkit.analysis.benchmarking.method_inputs import phase_map
    from detkit.analysis.benchmarking.timing import Clock, PhaseTimer

    records = {r.image_id: r for r in data.records}
    missing = [i for i in image_ids if i not in records]
    if missing or not image_ids:
        raise ValueError(f"lineage: images {missing or '(none)'} are not in {data.name}")
    from detkit.data.images import read_image
    from detkit.engine.inference import detect

    device = torch.device(device)
    given = getattr(type(model), "proposals", "given") == "given"
    if given and proposals is None:
        raise ValueError(f"lineage: {type(model).__name__} takes proposals; pass the evaluation's boxes")
    phases = {k: list(v) for k, v in phase_map(model).items() if k != "roi_sampling"}
    clock = Clock(device)
    images = {i: read_image(records[i].file_name) for i in image_ids}

    def call(i: int):
        return detect(model, [images[i]], transform, device=device, amp=amp,
                      proposals=[proposals[i]] if given else None)

    for _ in range(max(0, warmup)):
        call(image_ids[0])
    sums = {p: 0.0 for p in PHASES}
    rois = 0
    with PhaseTimer(model, phases, clock) as timer:
        for i in image_ids:
            timer.start()
            clock.sync()
            t0 = time.perf_counter()
            call(i)
            clock.sync()
            wall = (time.perf_counter() - t0) * 1000.0
            parts = timer.totals_ms()
            named = {p: parts.get(p, 0.0) for p in ("proposals", "trunk", "region_head", "postprocess")}
            named["other"] = max(0.0, wall - sum(named.values()))
            for p, v in named.items():
                sums[p] += v
            rois += timer.rois
    n = len(image_ids)
    phases_ms = {p: v / n for p, v in sums.items()}
    network_ms = sum(phases_ms.values())
    if given and search_seconds:
        phases_ms["proposals"] = 1000.0 * statistics.fmean(search_seconds.values())
    source = {"given": "selective search" if search_seconds else "given boxes", "rpn": "RPN"}.get(
        getattr(type(model), "proposals", "given"), getattr(type(model), "proposals", "given"))
    return {"phases_ms": phases_ms, "network_ms": network_ms, "total_ms": sum(phases_ms.values()),
            "rois_per_image": rois / n, "images": n, "proposal_source": source,
            "device": str(device), "amp": amp}


def proposal_recall_curves(data: DetectionData, *, search: Mapping[int, np.ndarray] | None = None,
                           rpn_checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                           counts: Sequence[int] = RECALL_COUNTS, rpn_top_n: int = 2000,
                           rpn_pre_nms_top_n: int = 6000) -> dict[str, Any]:
    """Recall at IoU 0.5 and 0.7 against proposals per image, for selective search and the RPN.

    Args:
        data: the test split.
        search: the selective search boxes of every image of ``data`` (all of them, best first).
        rpn_checkpoint: a Faster R-CNN checkpoint; its RPN is run with ``rpn_pre_nms_top_n`` boxes
            before NMS and ``rpn_top_n`` after (the paper's test setting is 6000 / 300; the curve
            needs more than 300).

    Returns:
        ``{"counts": [...], "curves": {"selective search": result, "RPN": result}}`` where each
        result is :func:`detkit.evaluation.recall.proposal_recall`'s (only the sources given).
    """
    from detkit.evaluation.recall import proposal_recall

    curves: dict[str, Any] = {}
    if search is not None:
        curves["selective search"] = proposal_recall(search, data, counts=counts)
    if rpn_checkpoint is not None:
        from detkit.data.transforms import eval_transforms
        from detkit.engine.checkpoint import model_from_checkpoint
        from detkit.engine.inference import rpn_proposals

        model, ckpt = model_from_checkpoint(rpn_checkpoint)
        tf = eval_transforms(((ckpt["config"].get("data") or {}).get("transforms")))
        boxes = rpn_proposals(model, data, tf, device=device, top_n=rpn_top_n, pre_nms_top_n=rpn_pre_nms_top_n,
                              progress=False)
        curves["RPN"] = proposal_recall(boxes, data, counts=counts)
    return {"counts": list(counts), "curves": curves}
