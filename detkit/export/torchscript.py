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
from detkit.export.onnx import compare_runtimes, example_inputs


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
    (:func:`detkit.export.onnx.compare_runtimes`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(image: torch.Tensor, props: torch.Tensor | None) -> list:
        with torch.no_grad():
            return [t.numpy() for t in loaded(image, *([props] if props is not None else []))]

    return compare_runtimes(run, graph, images, proposals=proposals, what=f"{path}: the TorchScript file",
                            atol_px=atol_px, rtol_px=rtol_px, atol_score=atol_score)
