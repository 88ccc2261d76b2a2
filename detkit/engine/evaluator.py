"""Run a detector over a data set and score it (VOC07, VOC10+ and COCO metrics).

``predict`` returns the in-memory detections of the evaluation contract::

    {image_id: {"boxes": (D, 4) float32 xyxy in the ORIGINAL image's continuous pixels,
                "scores": (D,) float32, "labels": (D,) int64 in 0..K-1}}

Detectors answer in the resized image's coordinates (``target["size"] = (H', W')``); a box maps
back to the file's pixels by ``x * W / W'``, ``y * H / H'`` with ``(H, W) = target["orig_size"]``.
Under DDP every process predicts a disjoint shard (``rank::world_size``) and rank 0 gathers.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from detkit.engine import distributed as ddp
from detkit.engine.precision import autocast_context
from detkit.utils.atomic import atomic_write_text

Detections = dict[int, dict[str, np.ndarray]]


def to_original_coords(boxes: torch.Tensor, size: tuple[int, int], orig_size: tuple[int, int]) -> torch.Tensor:
    """``(D, 4)`` xyxy boxes on the resized ``size=(H', W')`` image -> ``orig_size=(H, W)`` pixels."""
    (h1, w1), (h0, w0) = size, orig_size
    scale = boxes.new_tensor([w0 / w1, h0 / h1, w0 / w1, h0 / h1])
    out = boxes * scale
    # Predictions may reach slightly past the border; the evaluation expects boxes in the image.
    out[:, 0::2] = out[:, 0::2].clamp(0, w0)
    out[:, 1::2] = out[:, 1::2].clamp(0, h0)
    return out


def proposal_kwargs(targets: list[dict[str, Any]], device: torch.device | None = None) -> dict[str, Any]:
    """``{"proposals": [(P_i, 4) tensor per image]}`` when every target carries ``proposals``
    (datasets built with proposals, for Fast R-CNN), moved to ``device``; ``{}`` otherwise, so
    detectors with their own proposer (Faster R-CNN) are called as before."""
    if not targets or not all("proposals" in t for t in targets):
        return {}
    return {"proposals": [t["proposals"] if device is None else t["proposals"].to(device, non_blocking=True)
                          for t in targets]}


@torch.no_grad()
def detection_entry(output: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, np.ndarray]:
    """One image's model output ``{"boxes", "scores", "labels"}`` (in the dataset's resized pixels)
    as a ``Detections`` entry: numpy arrays, boxes back in the original image's pixels."""
    boxes = to_original_coords(output["boxes"].float(), target["size"], target["orig_size"])
    return {
        "boxes": boxes.cpu().numpy().astype(np.float32).reshape(-1, 4),
        "scores": output["scores"].float().cpu().numpy().astype(np.float32).reshape(-1),
        "labels": output["labels"].cpu().numpy().astype(np.int64).reshape(-1),
    }


def predict(
    model: nn.Module,
    dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    num_workers: int = 0,
    amp: str = "none",
    channels_last: bool = False,
    size_divisible: int = 32,
    progress: bool = True,
    desc: str = "eval",
    timing: dict[str, float] | None = None,
) -> Detections:
    """Detections for every image of a ``DetectionDataset`` (module docstring), on every rank.

    Args:
        model: a detector following the detector contract (DDP-wrapped or not).
        dataset: yields ``(image (3, H', W') uint8, target)`` with ``image_id``, ``size``, ``orig_size``
            (and ``proposals``, passed to the model as ``proposals=``, when the dataset has them).
        batch_size: images per forward pass.
        timing: when a dict, ``model_seconds`` (the model calls alone, synchronised on a GPU) and
            ``images`` (predicted by this process) are added to it.
    """
    from detkit.data.dataset import collate_detections

    device = torch.device(device)
    net = ddp.unwrap(model)
    was_training = net.training
    net.eval()
    rank, world = ddp.get_rank(), ddp.get_world_size()
    shard = Subset(dataset, list(range(rank, len(dataset), world))) if world > 1 else dataset
    loader = DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_detections, size_divisible=size_divisible),
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # leave the global RNG (the training stream) untouched
    )
    results: Detections = {}
    bar = tqdm(loader, desc=desc, unit="batch", disable=not progress or not ddp.is_main(), leave=False)
    try:
        for batch, targets in bar:
            batch = batch.to(device, non_blocking=True)
            if channels_last:
                batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
            if timing is not None:
                _sync(device)
                t0 = time.perf_counter()
            with autocast_context(device, amp):
                outputs = net(batch, **proposal_kwargs(targets, device))
            if timing is not None:
                _sync(device)
                timing["model_seconds"] = timing.get("model_seconds", 0.0) + time.perf_counter() - t0
                timing["images"] = timing.get("images", 0) + len(targets)
            for out, tgt in zip(outputs, targets):
                results[int(tgt["image_id"])] = detection_entry(out, tgt)
    finally:
        net.train(was_training)
    if world > 1:
        parts = ddp.gather_to_main(results)
        merged: Detections = {}
        for p in parts or []:
            merged.update(p)
        results = ddp.broadcast_object(merged if ddp.is_main() else None)
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_predict(model: nn.Module, dataset, *, device: torch.device | str = "cpu",
                  **kwargs: Any) -> tuple[Detections, dict[str, float]]:
    """``predict`` plus its cost: ``(detections, {"seconds", "images", "seconds_per_image",
    "model_seconds", "model_seconds_per_image"})``. ``seconds`` is the wall time of the whole pass
    (data loading, transfer, forward with post-processing, mapping boxes back; the DataLoader's
    worker start-up too); ``model_seconds`` the model calls alone. Per image: over this process's
    images (a shard under DDP)."""
    device = torch.device(device)
    timing: dict[str, float] = {"model_seconds": 0.0, "images": 0}
    _sync(device)
    t0 = time.perf_counter()
    dets = predict(model, dataset, device=device, timing=timing, **kwargs)
    _sync(device)
    timing["seconds"] = time.perf_counter() - t0
    n = max(int(timing["images"]), 1)
    timing["seconds_per_image"] = timing["seconds"] / n
    timing["model_seconds_per_image"] = timing["model_seconds"] / n
    return dets, timing


def score_detections(detections: Detections, data, *, coco: bool = True) -> dict[str, Any]:
    """VOC07 11-point and VOC10+ area AP at IoU 0.5 (per class + mAP) and, with ``coco``, COCOeval.

    Returns a JSON-ready dict ``{"voc07": {...}, "voc12": {...}, "coco": {...}}``; ``coco`` is
    ``{"error": ...}`` if pycocotools could not score (e.g. no detections at all).
    """
    from detkit.evaluation.voc import evaluate_voc

    out: dict[str, Any] = {
        "voc07": evaluate_voc(detections, data, use_07_metric=True).to_dict(),
        "voc12": evaluate_voc(detections, data, use_07_metric=False).to_dict(),
    }
    if coco:
        try:
            from detkit.evaluation.coco import evaluate_coco
        except ImportError as e:  # the COCO module belongs to the evaluation package
            out["coco"] = {"error": f"detkit.evaluation.coco unavailable: {e}"}
        else:
            try:
                out["coco"] = _plain(evaluate_coco(detections, data))
            except (ValueError, IndexError) as e:  # pycocotools raises IndexError on empty results
                out["coco"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def _plain(obj: Any) -> Any:
    """Numpy scalars/arrays and NaN -> JSON-ready Python values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if np.isnan(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (:func:`detkit.utils.atomic.atomic_write_text`), so readers never see half a file."""
    return atomic_write_text(path, json.dumps(_plain(obj), indent=2) + "\n")
