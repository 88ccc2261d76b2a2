"""Training and test augmentation: a box-safe random crop, the Fast R-CNN resize rule, horizontal
flip, colour jitter.

Everything geometric goes through albumentations with ``BboxParams(format="pascal_voc")``, whose
``(x_min, y_min, x_max, y_max)`` pixel boxes are detkit's 0-based continuous xyxy (albumentations
normalises by the image width/height, so a box ``[0, W]`` spans the whole image and a horizontal
flip maps ``x -> W - x``).

Resize rule (Fast R-CNN, Girshick 2015, "scale"): an image of shorter side ``short`` and longer side
``long`` is scaled once by::

    scale = min(s / short, max_size / long)

so the shorter side becomes ``s`` unless that would make the longer side exceed ``max_size``.
In training ``s`` is drawn uniformly from ``min_size`` (multi-scale training); at test time the
**largest** value of ``min_size`` is used (the Fast R-CNN / detectron2 convention: test at the
top training scale). The output size is ``(round(h * scale), round(w * scale))``.

Boxes that albumentations drops (zero size on input, or narrower/shorter than one pixel after the
resize: "sub-pixel") are dropped together with their labels and every other per-box field
(``difficult``, ``iscrowd``, ...): an index label field rides along with the boxes and the kept
indices select the other fields.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch.utils.data

import albumentations as A
from albumentations.augmentations.geometric.resize import MaxSizeTransform

# ColorJitter factors (torchvision semantics): brightness/contrast/saturation in [1-f, 1+f],
# hue shift in [-h, h] of a full turn. Mild: strong jitter hurts on small data sets.
DEFAULT_COLOR_JITTER: dict[str, float] = {
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.2,
    "hue": 0.02,
    "p": 0.8,
}
_JITTER_KEYS = {"brightness", "contrast", "saturation", "hue", "p"}
_INDEX_FIELD = "box_index"


def fast_rcnn_scale(height: int, width: int, short_side: int, max_size: int) -> float:
    """The Fast R-CNN scale factor ``min(short_side / min(h, w), max_size / max(h, w))``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got (h={height}, w={width})")
    return min(short_side / min(height, width), max_size / max(height, width))


class FastRCNNResize(MaxSizeTransform):
    """Resize so the shorter side is ``s`` (drawn from ``min_size``) and the longer side <= ``max_size``.

    Written by hand because albumentations has no single transform for the Fast R-CNN rule:
    ``SmallestMaxSize`` followed by ``LongestMaxSize`` gives the same size but interpolates the
    image twice. We reuse ``MaxSizeTransform`` (which resizes image/masks by a ``scale`` param and
    leaves the normalised boxes alone) and only compute the scale.

    Args:
        min_size: candidate shorter-side lengths ``s``; one is drawn per image when ``random=True``,
            otherwise the largest is used.
        max_size: cap on the longer side after resizing.
        random: draw ``s`` at random (training) or use ``max(min_size)`` (test).
        interpolation: OpenCV interpolation flag for the image.
    """

    def __init__(
        self,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        random: bool = True,
        interpolation: int = cv2.INTER_LINEAR,
        p: float = 1.0,
    ):
        sizes = _as_sizes(min_size)
        if not isinstance(max_size, int) or max_size <= 0:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        super().__init__(max_size=max_size, interpolation=interpolation, p=p)
        self.min_size = sizes
        self.random = random

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        s = self.py_random.choice(self.min_size) if self.random else max(self.min_size)
        return {"scale": fast_rcnn_scale(h, w, s, self.max_size), "short_side": s}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_size", "max_size", "random", "interpolation")


def _as_sizes(min_size: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (min_size,) if isinstance(min_size, (int, np.integer)) else tuple(min_size)
    if not sizes or any(not isinstance(s, (int, np.integer)) or s <= 0 for s in sizes):
        raise ValueError(f"min_size must be a positive int or a non-empty list of them, got {min_size!r}")
    return tuple(int(s) for s in sizes)


class DetectionTransform:
    """Callable wrapper: image + boxes + per-box fields in, transformed and re-indexed out.

    Call with ``image`` ``(H, W, 3)`` uint8, ``boxes`` ``(N, 4)`` xyxy 0-based continuous, and any
    per-box arrays of length ``N`` as keywords (``labels``, ``difficult``, ``iscrowd``, ...).
    Returns a dict with ``image`` ``(H', W', 3)`` uint8, ``boxes`` ``(M, 4)`` float32 in the new
    image's coordinates, each per-box field restricted to the ``M`` surviving boxes (same order),
    ``orig_size`` ``(H, W)`` and ``size`` ``(H', W')``. Map predictions back to the original image
    with ``x * W / W'`` and ``y * H / H'`` (per axis: the rounding makes the two factors differ
    slightly from ``scale``).

    Attributes:
        compose: the underlying ``A.Compose`` (serialisable, inspectable).
    """

    def __init__(self, compose: A.Compose):
        self.compose = compose
        self._worker_seeded: tuple[int, int] | None = None

    def _seed_for_worker(self) -> None:
        # DataLoader workers are forked copies holding the same albumentations RNG state, so they
        # would all draw the same flips and scales. Reseed once per worker from torch's per-worker
        # seed (distinct per worker and epoch, reproducible when torch is seeded).
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seeded != (info.id, info.seed):
            self.compose.set_random_seed(info.seed % 2**32)
            self._worker_seeded = (info.id, info.seed)

    def set_random_seed(self, seed: int) -> None:
        """Seed the augmentation draws. An explicit seed (the trainer seeds every sample from
        ``(seed, epoch, index)``) also stands in for the per-worker reseed, which would otherwise
        override it for the first sample a worker loads."""
        info = torch.utils.data.get_worker_info()
        if info is not None:
            self._worker_seeded = (info.id, info.seed)
        self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, **fields: np.ndarray) -> dict[str, Any]:
        self._seed_for_worker()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        for k, v in fields.items():
            if len(v) != n:
                raise ValueError(f"per-box field {k!r} has {len(v)} entries for {n} boxes")
        out = self.compose(image=image, bboxes=boxes, **{_INDEX_FIELD: np.arange(n, dtype=np.int64)})
        keep = np.asarray(out[_INDEX_FIELD], dtype=np.int64).reshape(-1)
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        result: dict[str, Any] = {
            "image": out["image"],
            "boxes": new_boxes,
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "size": (int(out["image"].shape[0]), int(out["image"].shape[1])),
        }
        for k, v in fields.items():
            result[k] = np.asarray(v)[keep]
        return result

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose!r})"


def eval_transforms(transforms: Mapping[str, Any] | None) -> DetectionTransform:
    """The test pipeline of a run config's ``data.transforms`` node (``min_size`` / ``max_size``,
    600 / 1000 when absent): what training's evaluation, the stages and the tools use."""
    tf = dict(transforms or {})
    return build_transforms(train=False, min_size=tf.get("min_size", 600), max_size=tf.get("max_size", 1000))


def build_transforms(
    *,
    train: bool,
    min_size: int | Sequence[int] = 600,
    max_size: int = 1000,
    hflip_prob: float = 0.5,
    color_jitter: Mapping[str, float] | None = DEFAULT_COLOR_JITTER,
    crop_prob: float = 0.0,
    min_box_size: float = 1.0,
    interpolation: int = cv2.INTER_LINEAR,
    seed: int | None = None,
) -> DetectionTransform:
    """The detkit augmentation pipeline.

    Training: with probability ``crop_prob`` a random crop that keeps every box whole
    (``A.BBoxSafeRandomCrop``: its sides lie anywhere between the boxes' union and the image
    border) -> Fast R-CNN resize with ``s`` drawn from ``min_size`` (so a crop is also a zoom-in)
    -> horizontal flip with probability ``hflip_prob`` -> colour jitter (``color_jitter`` keys:
    brightness, contrast, saturation, hue, p; ``None`` turns it off). Test: resize with
    ``max(min_size)`` only.

    Args:
        train: build the training pipeline (random scale, flip, jitter) or the test one.
        min_size: shorter-side length(s) ``s`` of the resize rule (module docstring).
        max_size: cap on the longer side.
        hflip_prob: probability of a horizontal flip (training only).
        color_jitter: ``A.ColorJitter`` factors plus ``p``; missing keys take the defaults.
        crop_prob: probability of the box-safe random crop (training only; 0: never). No box is
            cut, so labels and ``difficult`` flags stay true; an image without boxes keeps its size.
        min_box_size: boxes narrower or shorter than this many pixels after the resize are dropped
            (1.0 = "sub-pixel boxes are dropped").
        interpolation: OpenCV flag for the image resize.
        seed: seed for albumentations' random generators (``None``: fresh randomness). Inside
            DataLoader workers the generators are reseeded from torch's per-worker seed instead.

    Returns:
        A ``DetectionTransform`` (see its docstring for the call signature and outputs).
    """
    for name, prob in (("hflip_prob", hflip_prob), ("crop_prob", crop_prob)):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {prob}")
    steps: list[A.BasicTransform] = []
    if train and crop_prob > 0:  # before the resize: the crop is then scaled to the training size
        steps.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=float(crop_prob)))
    steps.append(FastRCNNResize(min_size=min_size, max_size=max_size, random=train, interpolation=interpolation))
    if train:
        if hflip_prob > 0:
            steps.append(A.HorizontalFlip(p=hflip_prob))
        if color_jitter is not None:
            unknown = set(color_jitter) - _JITTER_KEYS
            if unknown:
                raise ValueError(
                    f"color_jitter: unknown keys {sorted(unknown)}; allowed {sorted(_JITTER_KEYS)}"
                )
            cj = {**DEFAULT_COLOR_JITTER, **dict(color_jitter)}
            p = float(cj.pop("p"))
            if p > 0:
                steps.append(A.ColorJitter(**{k: float(v) for k, v in cj.items()}, p=p))
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=[_INDEX_FIELD],
        min_width=min_box_size,
        min_height=min_box_size,
        clip=True,  # VOC boxes may touch or cross the border by a pixel
        filter_invalid_bboxes=True,  # zero-size boxes in the files are dropped, not fatal
    )
    kwargs: dict[str, Any] = {"bbox_params": bbox_params}
    if seed is not None:
        kwargs["seed"] = seed
    return DetectionTransform(A.Compose(steps, **kwargs))
