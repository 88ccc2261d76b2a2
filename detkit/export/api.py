"""Export a loaded detector (:class:`detkit.Predictor`) to a file and check the file against PyTorch."""
from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import torch

from detkit.export.graph import ExportableDetector
from detkit.export.onnx import ExportError, export_onnx, grid_proposals, time_runtimes, verify_onnx
from detkit.export.torchscript import export_torchscript, verify_torchscript

FORMATS = ("onnx", "torchscript")


def resize_settings(config: dict[str, Any]) -> tuple[int, int]:
    """``(min_size, max_size)`` of a run config's test resize (``eval_transforms``: the largest
    training scale, 600 / 1000 when the config has none)."""
    tf = dict((config.get("data") or {}).get("transforms") or {})
    sizes = tf.get("min_size", 600)
    short = max(int(s) for s in sizes) if isinstance(sizes, Sequence) else int(sizes)
    return short, int(tf.get("max_size", 1000))


def check_images(images: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``(3, H, W)`` uint8 images to check an export on: the given ones, or two generated ones, a
    landscape and a portrait, whose sizes differ from the traced example's (480 x 640)."""
    if images:
        return list(images)
    gen = torch.Generator().manual_seed(0)
    out = []
    for h, w in ((375, 500), (520, 390)):
        base = torch.randint(0, 256, (3, h // 8 + 1, w // 8 + 1), generator=gen, dtype=torch.uint8).float()
        # Smooth blobs, not noise: a picture's statistics are closer to blobs.
        out.append(torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0].to(torch.uint8))
    return out


def export_predictor(predictor, path: str | os.PathLike, *, format: str = "onnx",
                     images: Sequence[torch.Tensor] | None = None, verify: bool = True,
                     benchmark: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Write ``predictor``'s detector to ``path`` as ``format`` (``onnx`` or ``torchscript``) and,
    with ``verify``, check the file against PyTorch on ``images`` (``(3, H, W)`` uint8; default
    :func:`check_images`). With ``benchmark`` (ONNX), also time onnxruntime against the same graph
    in PyTorch on those images, with ``threads`` intra-op threads.

    Returns:
        ``{"path", "format", "method", "min_size", "max_size", "check": {...}, "latency": {...}}``
        (``check``: the largest differences, :func:`detkit.export.onnx.verify_onnx`, absent without
        ``verify``; ``latency``: :func:`detkit.export.onnx.time_runtimes`, only with ``benchmark``).

    Raises:
        ExportError: a method that does not export as one graph, a missing runtime, or a file
            that disagrees with PyTorch.
    """
    if format not in FORMATS:
        raise ExportError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if benchmark and format != "onnx":
        raise ExportError("export: benchmark times onnxruntime; use it with format 'onnx'")
    method = str((predictor.config.get("method") or {}).get("name", type(predictor.model).__name__))
    min_size, max_size = resize_settings(predictor.config)
    try:
        graph = ExportableDetector(copy.deepcopy(predictor.model).float().cpu(), min_size=min_size, max_size=max_size)
    except TypeError as e:
        raise ExportError(str(e)) from None
    writer, checker = (export_onnx, verify_onnx) if format == "onnx" else (export_torchscript, verify_torchscript)
    out = writer(graph, path, class_names=predictor.class_names, method=method)
    info: dict[str, Any] = {"path": str(out), "format": format, "method": method,
                            "min_size": min_size, "max_size": max_size}
    if not (verify or benchmark):
        return info
    imgs = check_images(images)
    props = [grid_proposals(int(im.shape[1]), int(im.shape[2])) for im in imgs] if graph.given_proposals else None
    if verify:
        info["check"] = checker(out, graph, imgs, proposals=props)
    if benchmark:
        info["latency"] = time_runtimes(out, graph, imgs, proposals=props, threads=threads)
    return info


__all__ = ["FORMATS", "ExportError", "check_images", "export_predictor", "resize_settings"]
