"""ONNX export of a trained Faster R-CNN or Fast R-CNN, checked with onnxruntime.

The graph is :class:`detkit.export.graph.ExportableDetector` traced with ``torch.onnx.export``'s
TorchScript-based exporter (opset 17). That exporter, not the newer ``dynamo=True`` one, because
it translates torchvision's ``roi_pool`` (the papers' RoI max pooling); the newer exporter fails on
it. Interface (any runtime, no detkit needed):

* input ``image``: uint8 ``(3, H, W)`` RGB, any ``H, W``; Fast R-CNN adds ``proposals``
  ``(P, 4)`` float32 xyxy in the image's pixels;
* outputs ``boxes`` ``(D, 4)`` float32 xyxy in the image's pixels, ``scores`` ``(D,)`` float32,
  ``labels`` ``(D,)`` int64 indices into ``class_names``;
* metadata (``metadata_props``): ``class_names`` (JSON list), ``method``, ``min_size``,
  ``max_size``, ``detkit_version``.

:func:`verify_onnx` runs the file with onnxruntime on the CPU and compares it with the PyTorch
graph on the same images, detection by detection: boxes within ``atol_px`` (1e-3) pixels plus
``rtol_px`` (5e-6) of the coordinate, at the network's input scale (an input larger than the test
size has its boxes scaled up by the resize ratio, and their differences with them), scores within
``atol_score`` (1e-4). The relative part is float32 rounding: box decoding's ``exp`` and the scale
back to the input's pixels each differ by a few ulps between runtimes, up to about 2e-3 px at a
coordinate of 700. ``detkit export`` always verifies.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from detkit.export.graph import ExportableDetector

OPSET = 17
OUTPUT_NAMES = ["boxes", "scores", "labels"]


class ExportError(RuntimeError):
    """Export failed or the exported model disagrees with PyTorch (the message says by how much)."""


def _require_onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): "
                          "pip install 'detkit[export]'") from None
    return onnxruntime


def example_inputs(graph: ExportableDetector, height: int = 480, width: int = 640) -> tuple[torch.Tensor, ...]:
    """A traced example: a smooth uint8 image (and, for Fast R-CNN, a grid of proposals). The
    values do not matter to the graph; its sizes stay dynamic."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = (torch.stack((xx, yy, (xx + yy) / 2)) * 255).to(torch.uint8)
    if not graph.given_proposals:
        return (image,)
    return (image, grid_proposals(height, width))


def grid_proposals(height: int, width: int, step: int = 64) -> torch.Tensor:
    """``(P, 4)`` boxes of three sizes on a regular grid: stand-in proposals for tracing and checks."""
    boxes = []
    for size in (64, 128, 256):
        for y in range(0, max(1, height - size // 2), step):
            for x in range(0, max(1, width - size // 2), step):
                boxes.append((x, y, min(x + size, width), min(y + size, height)))
    return torch.tensor(boxes, dtype=torch.float32)


def export_onnx(graph: ExportableDetector, path: str | os.PathLike, *, class_names: Sequence[str],
                method: str, opset: int = OPSET) -> Path:
    """Trace ``graph`` into an ONNX file at ``path`` with the interface of the module docstring."""
    _require_onnxruntime()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(graph)
    input_names = ["image"] + (["proposals"] if graph.given_proposals else [])
    dynamic = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    if graph.given_proposals:
        dynamic["proposals"] = {0: "proposals"}
    tmp = path.with_name(path.name + ".partial")
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about every shape it reads; the graph reads them as tensors on purpose.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(tmp), dynamo=False, opset_version=opset, input_names=input_names,
                          output_names=OUTPUT_NAMES, dynamic_axes=dynamic, do_constant_folding=True)
    model = onnx.load(str(tmp))
    from detkit import __version__

    meta = {"class_names": json.dumps(list(class_names)), "method": method, "min_size": str(int(graph.min_size)),
            "max_size": str(int(graph.max_size)), "detkit_version": __version__}
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def class_names_of(path: str | os.PathLike) -> list[str]:
    """The ``class_names`` stored in an exported ONNX file's metadata."""
    ort = _require_onnxruntime()
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    if "class_names" not in meta:
        raise ExportError(f"{path}: no class_names in the model's metadata (not exported by detkit?)")
    return list(json.loads(meta["class_names"]))


def verify_onnx(path: str | os.PathLike, graph: ExportableDetector, images: Sequence[torch.Tensor], *,
                proposals: Sequence[torch.Tensor] | None = None, atol_px: float = 1e-3,
                rtol_px: float = 5e-6, atol_score: float = 1e-4) -> dict[str, float]:
    """Run ``path`` with onnxruntime (CPU) and ``graph`` in PyTorch on each ``(3, H, W)`` uint8
    image; raise :class:`ExportError` unless the detections agree (:func:`compare_runtimes`)."""
    ort = _require_onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(image: torch.Tensor, props: torch.Tensor | None) -> list[np.ndarray]:
        feeds = {"image": image.numpy(), **({"proposals": props.numpy()} if props is not None else {})}
        return session.run(OUTPUT_NAMES, feeds)

    return compare_runtimes(run, graph, images, proposals=proposals, what=f"{path}: onnxruntime",
                            atol_px=atol_px, rtol_px=rtol_px, atol_score=atol_score)


def compare_runtimes(run, graph: ExportableDetector, images: Sequence[torch.Tensor], *, what: str,
                     proposals: Sequence[torch.Tensor] | None = None, atol_px: float = 1e-3,
                     rtol_px: float = 5e-6, atol_score: float = 1e-4) -> dict[str, float]:
    """Compare ``run(image, proposals)`` (an exported file's ``[boxes, scores, labels]`` arrays) with
    ``graph`` in PyTorch on each image; raise :class:`ExportError` naming ``what`` on disagreement.

    Detections are matched as sets (same label, nearest box), since two detections whose scores
    differ by less than the runtimes' rounding may be listed in either order.

    Returns:
        ``{"images", "detections", "max_box_px", "max_score"}``: the largest differences seen.
    """
    if graph.given_proposals and proposals is None:
        raise ValueError("compare_runtimes: a Fast R-CNN graph needs proposals for each image")
    worst = {"images": 0, "detections": 0, "max_box_px": 0.0, "max_score": 0.0}
    for i, image in enumerate(images):
        props = proposals[i] if graph.given_proposals else None
        with torch.no_grad():
            ref = [t.numpy() for t in graph(image, *([props] if props is not None else []))]
        out = run(image, props)
        # Tolerances hold at the network's input scale: a box error there is multiplied by the
        # resize ratio when the graph maps boxes back to a larger input.
        h, w = int(image.shape[1]), int(image.shape[2])
        zoom = max(1.0, 1.0 / min(graph.min_size / min(h, w), graph.max_size / max(h, w)))
        box_px, score = match_detections(out, ref, rtol_px=rtol_px)
        box_px /= zoom
        if len(out[0]) != len(ref[0]) or box_px > atol_px or score > atol_score:
            raise ExportError(f"{what} and PyTorch disagree on image {i} ({tuple(image.shape)}): "
                              f"{len(out[0])} vs {len(ref[0])} detections, boxes up to {box_px:.2g} px apart "
                              f"at the network's input scale (tolerance {atol_px}), scores up to {score:.2g} "
                              f"(tolerance {atol_score})")
        worst["images"] += 1
        worst["detections"] += len(ref[0])
        worst["max_box_px"] = max(worst["max_box_px"], box_px)
        worst["max_score"] = max(worst["max_score"], score)
    return worst


def match_detections(a: Sequence[np.ndarray], b: Sequence[np.ndarray], *, rtol_px: float = 0.0) -> tuple[float, float]:
    """Largest box and score difference between detection sets ``a`` and ``b``
    (``(boxes, scores, labels)``), each of ``a``'s matched to ``b``'s nearest box of its label.

    The box difference is in pixels beyond ``rtol_px * |coordinate|`` (float32 rounding, which
    grows with the coordinate); ``inf`` when a label has no counterpart.
    """
    if len(a[0]) == 0 or len(b[0]) == 0:
        return (0.0, 0.0) if len(a[0]) == len(b[0]) else (float("inf"), float("inf"))
    dist = (np.abs(a[0][:, None, :] - b[0][None, :, :]) - rtol_px * np.abs(b[0][None, :, :])).max(-1)
    dist = np.where(a[2][:, None] == b[2][None, :], dist, np.inf)
    nearest = dist.argmin(1)
    return max(0.0, float(dist.min(1).max())), float(np.abs(a[1] - b[1][nearest]).max())


def time_runtimes(path: str | os.PathLike, graph: ExportableDetector, images: Sequence[torch.Tensor], *,
                  proposals: Sequence[torch.Tensor] | None = None, repeats: int = 5,
                  threads: int | None = None) -> dict[str, float]:
    """Median milliseconds per image of the ONNX file in onnxruntime and of the same graph in
    PyTorch (eager, float32), one image at a time, after one warm-up pass each.

    ``threads``: intra-op threads for both (``None``: each runtime's default).
    """
    import statistics
    import time

    ort = _require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    runs: dict[str, list[float]] = {"onnxruntime": [], "pytorch": []}
    try:
        for i, image in enumerate(images):
            feeds = {"image": image.numpy()}
            args: tuple = (image,)
            if graph.given_proposals:
                feeds["proposals"] = proposals[i].numpy()
                args = (image, proposals[i])
            for name, call in (("onnxruntime", lambda: session.run(OUTPUT_NAMES, feeds)),
                               ("pytorch", lambda: graph(*args))):
                with torch.no_grad():
                    call()  # warm-up
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call()
                        runs[name].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(saved)
    return {f"{name}_ms": statistics.median(v) for name, v in runs.items()}
