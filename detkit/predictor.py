"""Detect objects in one call: ``detkit.load(checkpoint)`` -> a :class:`Predictor`.

    import detkit
    predictor = detkit.load("outputs/bccd-faster_rcnn-alexnet/last.pt")
    dets = predictor("blood.jpg")                 # a path, PIL image, (H, W, 3) RGB array or (3, H, W) tensor
    dets.boxes, dets.scores, dets.labels, dets.names   # boxes: (N, 4) xyxy in the image's own pixels
    picture = dets.draw(image)                    # (H, W, 3) uint8 with the boxes drawn

Any of the five methods: the model is rebuilt from the config stored in the checkpoint (only
detkit's own builders may be named there: ``detkit.engine.checkpoint``), images are resized with
that run's test transform and the boxes come back in each image's original pixels
(``detkit.engine.inference``, the path ``tools/infer.py`` and the evaluator share).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Detections", "Predictor", "load"]


@dataclass
class Detections:
    """The objects found in one image.

    Attributes:
        boxes: ``(N, 4)`` float32, ``(x0, y0, x1, y1)`` in the original image's continuous pixels.
        scores: ``(N,)`` float32, highest first.
        labels: ``(N,)`` int64 indices into ``class_names``.
        class_names: the checkpoint's classes.
        category_ids: the external id of each class (COCO ids; ``1..K`` for VOC data).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    category_ids: list[int]

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def names(self) -> list[str]:
        """The class name of each detection."""
        return [self.class_names[int(k)] for k in self.labels]

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
        (the detections file format of ``detkit.evaluation.detections``)."""
        return [{"image_id": int(image_id), "category_id": int(self.category_ids[int(k)]),
                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
                for b, s, k in zip(self.boxes, self.scores, self.labels)]

    def draw(self, image, *, score_threshold: float = 0.0) -> np.ndarray:
        """A copy of ``image`` (any input :meth:`Predictor.__call__` takes) with the boxes drawn."""
        from detkit.visualization.draw import draw_detections

        return draw_detections(as_rgb_array(image), self.boxes, self.labels, self.scores, self.class_names,
                               score_threshold=score_threshold)


class PredictorInputError(ValueError):
    """An input the predictor cannot read as an image (the message names it)."""


def as_rgb_array(x) -> np.ndarray:
    """A path, PIL image, ``(H, W, 3)`` uint8 RGB array or ``(3, H, W)`` uint8 tensor -> ``(H, W, 3)`` uint8."""
    if isinstance(x, (str, os.PathLike)):
        from detkit.data.images import read_image
        return read_image(str(x))
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.uint8 or x.dim() != 3 or x.shape[0] != 3:
            raise PredictorInputError(f"a tensor image must be (3, H, W) uint8 RGB, got {x.dtype} {tuple(x.shape)}")
        return x.permute(1, 2, 0).contiguous().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise PredictorInputError(f"an array image must be (H, W, 3) uint8 RGB, got {x.dtype} {x.shape}")
        return x
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        return np.asarray(x.convert("RGB"))
    raise PredictorInputError(f"cannot read a {type(x).__name__} as an image: give a path, a PIL image, "
                              "an (H, W, 3) uint8 RGB array or a (3, H, W) uint8 tensor")


class Predictor:
    """A trained detector behind one call (detectron2's ``DefaultPredictor``, for the whole lineage).

    Build it with :func:`load`. Attributes: ``model`` (the ``nn.Module``, eval mode, on ``device``),
    ``config`` (the run config stored in the checkpoint, overrides applied), ``class_names``,
    ``category_ids``, ``device``, ``amp``.
    """

    def __init__(self, model: nn.Module, config: dict[str, Any], class_names: Sequence[str], *,
                 category_ids: Sequence[int] | None = None, device: torch.device | str = "cpu",
                 amp: str = "none", batch_size: int = 4) -> None:
        from detkit.data.transforms import eval_transforms

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.class_names = list(class_names)
        self.category_ids = list(category_ids or range(1, len(self.class_names) + 1))
        self.amp = amp
        self.batch_size = max(1, int(batch_size))
        self.transform = eval_transforms((config.get("data") or {}).get("transforms"))

    def __call__(self, x, score_threshold: float | None = None, *, proposals=None) -> Detections | list[Detections]:
        """Detect objects: one image -> a :class:`Detections`; a list -> a list of them.

        Args:
            x: a path, a PIL image, an ``(H, W, 3)`` uint8 RGB array, a ``(3, H, W)`` uint8 tensor,
                or a list of these.
            score_threshold: keep detections scoring at least this (``None``: all the model
                returns, i.e. above its own test threshold).
            proposals: for R-CNN, SPPNet and Fast R-CNN, your own region proposals: a ``(P, 4)``
                xyxy array in the image's pixels (a list of them for a list of images); ``None``
                runs the selective search the model was trained with on each image.
        """
        from detkit.engine.inference import detect

        single = not isinstance(x, (list, tuple))
        images = [as_rgb_array(im) for im in ([x] if single else x)]
        given = None if proposals is None else ([proposals] if single else list(proposals))
        if given is not None and len(given) != len(images):
            raise PredictorInputError(f"{len(given)} proposal arrays for {len(images)} images")
        out: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            props = None if given is None else given[start : start + self.batch_size]
            for det in detect(self.model, chunk, self.transform, device=self.device, amp=self.amp, proposals=props):
                keep = det["scores"] >= score_threshold if score_threshold is not None else slice(None)
                out.append(Detections(det["boxes"][keep], det["scores"][keep], det["labels"][keep],
                                      self.class_names, self.category_ids))
        return out[0] if single else out

    def quantize_trunk(self, images: Sequence) -> int:
        """int8 static quantisation of the trunk (CPU only), calibrated on ``images``: a handful
        (8-32) of the kind this predictor will see, as :meth:`__call__` takes them. Each is
        resized with this predictor's test transform. Returns the number of int8 convolutions
        (``detkit.compression.quantize_trunk``; docs/performance.md measures its cost).

        Raises:
            ValueError: not on the CPU, no images, or a trunk torch.fx cannot trace.
        """
        from detkit.compression.int8_trunk import quantize_trunk
        from detkit.data.batch import ImageBatch
        from detkit.engine.inference import test_input

        with torch.no_grad():
            batches = [ImageBatch.from_images([test_input(as_rgb_array(im), self.transform)[0]]) for im in images]
            inputs = [self.model.preprocess(batch)[0] for batch in batches]
        return quantize_trunk(self.model, inputs)

    def export(self, path: str | os.PathLike, format: str = "onnx", *, verify: bool = True,
               images: Sequence | None = None, benchmark: bool = False,
               threads: int | None = None) -> dict[str, Any]:
        """Write the detector as one graph (resize, network, NMS) for runtimes without detkit:
        ``format`` ``"onnx"`` or ``"torchscript"``; Faster R-CNN and Fast R-CNN (docs/deploy.md).

        With ``verify``, the file is run (onnxruntime / ``torch.jit.load``) and compared with
        PyTorch on ``images`` (paths, arrays, ... as :meth:`__call__` takes; default: two generated
        ones). ``benchmark`` (ONNX) also times onnxruntime against PyTorch on them, with
        ``threads`` threads. Returns what ``detkit.export.export_predictor`` returns.
        """
        from detkit.export import export_predictor

        tensors = None if images is None else [
            torch.from_numpy(as_rgb_array(im)).permute(2, 0, 1).contiguous() for im in images]
        return export_predictor(self, path, format=format, images=tensors, verify=verify,
                                benchmark=benchmark, threads=threads)

    def __repr__(self) -> str:
        method = (self.config.get("method") or {}).get("name", type(self.model).__name__)
        return f"Predictor({method}, {len(self.class_names)} classes, device={self.device})"


def load(checkpoint: str | os.PathLike, device: str | torch.device = "auto", overrides: Sequence[str] = (),
         *, amp: str = "none", batch_size: int = 4, svd: Sequence[int] | None = None,
         fast: bool = False, int8: bool = False, int8_trunk: Sequence | None = None) -> Predictor:
    """A :class:`Predictor` for a detkit checkpoint (``run_dir/last.pt``) of any method.

    Args:
        checkpoint: the file.
        device: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        overrides: ``KEY=VALUE`` test-time changes of the stored config, e.g.
            ``["method.model.box_score_thresh=0.3"]`` (``detkit.engine.checkpoint.apply_overrides``).
        amp: autocast at test time: ``"none"``, ``"bf16"``, ``"fp16"`` or ``"auto"``.
        batch_size: images per forward pass when given a list.
        fast: every test-time option detkit recommends for this device: bf16 autocast where it
            is faster (``amp="auto"``: bf16 GPUs; CPUs with AVX512-BF16 / AMX where a start-up timing
            finds bf16 faster; ``amp`` is then ignored), batch norm
            folded into the convolutions, ``channels_last``, and on the CPU int8 fc layers
            (``int8``; not for R-CNN, where they measured slower) (docs/performance.md, "--fast").
        svd: ranks for a truncated SVD of the region head's fc layers (fc6, fc7), e.g. ``(1024, 256)``
            for VGG-16 as in the Fast R-CNN paper: faster at test time for a small loss of
            accuracy (``detkit.compression``; docs/performance.md measures it).
        int8: int8 dynamic quantisation of the fc layers (region head and box predictor), CPU only
            (``detkit.compression.quantize_linear_layers``; docs/performance.md measures it).
        int8_trunk: images to calibrate an int8 static quantisation of the trunk on, CPU only
            (:meth:`Predictor.quantize_trunk`): 8-32 of the kind the predictor will see. Not part
            of ``fast``, which needs no images.

    Raises:
        detkit.engine.checkpoint.CheckpointError: the file is missing, corrupt, not a detkit
            checkpoint, names code that is not a detkit builder, or does not fit its config.
        ValueError: a speed option that does not apply (int8 off the CPU; ``int8_trunk`` off the
            CPU, for R-CNN or for a trunk ``torch.fx`` cannot trace).
    """
    from detkit.engine.checkpoint import model_from_checkpoint
    from detkit.engine.distributed import resolve_device

    model, ckpt = model_from_checkpoint(Path(checkpoint), list(overrides))
    device = resolve_device(str(device))
    if fast:
        from detkit.compression import make_fast
        from detkit.engine.precision import resolve_amp

        amp = resolve_amp("auto", device)
        make_fast(model)
    if svd:
        from detkit.compression import compress_region_head

        compress_region_head(model, list(svd))
    if int8 and device.type != "cpu":
        raise ValueError(f"detkit.load: int8=True quantises for the CPU; device is {device} (use device='cpu')")
    if int8 or fast and device.type == "cpu":
        from detkit.compression import int8_in_fast, quantize_linear_layers

        if int8 or int8_in_fast(model):  # after the SVD: its factors are quantised too
            quantize_linear_layers(model)
    predictor = Predictor(model, ckpt["config"], ckpt["class_names"], category_ids=ckpt.get("category_ids"),
                          device=device, amp=amp, batch_size=batch_size)
    if int8_trunk is not None:
        predictor.quantize_trunk(int8_trunk)
    return predictor
