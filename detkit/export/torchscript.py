"""TorchScript export: :class:`detkit.export.graph.ExportableDetector` traced with ``torch.jit.trace``.

The file runs in any PyTorch (C++ ``torch::jit::load`` or Python ``torch.jit.load``) with
torchvision's ops loaded (``import torchvision`` in Python; link ``torchvision`` in C++), without
detkit. Same interface as the ONNX file (``detkit.export.onnx``); the class names and resize
settings are stored as the file's extra files ``class_names.json`` and ``detkit.json``.

Tracing records the ops of one example run; the graph reads every size from tensors, so the
trace is valid for any image size (:func:`verify_torchscript` checks that on images of other
sizes than the example's).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from detkit.export.graph import ExportableDetector
from detkit.export.onnx import ExportError, example_inputs, match_detections


def export_torchscript(graph: ExportableDetector, path: str | os.PathLike, *, class_names: Sequence[str],
                       method: str) -> Path:
    """Trace ``graph`` and save it at ``path`` with its class names and settings as extra files."""
    from detkit import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer warns about every shape it reads (on purpose)
        traced = torch.jit.trace(graph, example_inputs(graph), check_trace=False)
    extra = {"class_names.json": json.dumps(list(class_names)),
             "detkit.json": json.dumps({"method": method, "min_size": int(graph.min_size),
                                        "max_size": int(graph.max_size), "detkit_version": __version__})}
    tmp = path.with_name(path.name + ".partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "deprecated": docs/deploy.md says what that means
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    os.replace(tmp, path)
    return path


def verify_torchscript(path: str | os.PathLike, graph: ExportableDetector, images: Sequence[torch.Tensor], *,
                       proposals: Sequence[torch.Tensor] | None = None, atol_px: float = 1e-3,
                       rtol_px: float = 5e-6, atol_score: float = 1e-4) -> dict[str, float]:
    """Load ``path`` with ``torch.jit.load`` and compare it with ``graph`` on each image
    (as :func:`detkit.export.onnx.verify_onnx`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    worst = {"images": 0, "detections": 0, "max_box_px": 0.0, "max_score": 0.0}
    for i, image in enumerate(images):
        args = (image,) if not graph.given_proposals else (image, proposals[i])
        with torch.no_grad():
            ref = [t.numpy() for t in graph(*args)]
            out = [t.numpy() for t in loaded(*args)]
        box_px, score = match_detections(out, ref, rtol_px=rtol_px)
        if len(out[0]) != len(ref[0]) or box_px > atol_px or score > atol_score:
            raise ExportError(f"{path}: the TorchScript file and PyTorch disagree on image {i} "
                              f"({tuple(image.shape)}): {len(out[0])} vs {len(ref[0])} detections, boxes up to "
                              f"{box_px:.2g} px apart, scores up to {score:.2g}")
        worst["images"] += 1
        worst["detections"] += len(ref[0])
        worst["max_box_px"] = max(worst["max_box_px"], box_px)
        worst["max_score"] = max(worst["max_score"], score)
    return worst
