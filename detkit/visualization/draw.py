"""Drawing detections (or ground truth) on an image: one colour per class, "name 0.93" captions.

Colours come from a fixed golden-ratio walk around the hue circle, so class ``k`` has the same
colour in every picture and neighbouring class indices look different. Drawing uses OpenCV
(Hershey text needs no font files); box edges are
plain array writes, kept inside the box.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

__all__ = ["class_color", "draw_detections", "save_image"]

_GOLDEN = 0.618033988749895
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` (deterministic; the same in every run and picture)."""
    hue = (0.08 + int(label) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    # dark text on light backgrounds, white on dark (ITU-R BT.601 luma)
    return (0, 0, 0) if 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 140 else (255, 255, 255)


def draw_detections(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    score_threshold: float = 0.0,
    thickness: int = 2,
    font_scale: float = 0.5,
) -> np.ndarray:
    """Draw boxes with captions on a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        boxes: ``(N, 4)`` xyxy, 0-based continuous pixel coordinates (a box covering pixel
            columns ``a..b`` has ``x0 = a, x1 = b + 1``); drawn clipped to the image.
        labels: ``(N,)`` class indices; they pick the colour and the caption's name.
        scores: ``(N,)`` or ``None``; when given, the caption reads ``"name 0.93"`` and boxes
            scoring below ``score_threshold`` are skipped.
        class_names: names for the labels; default the label number.
        score_threshold: see ``scores``.

    Returns:
        ``(H, W, 3)`` uint8 RGB; pixels change only on box edges and caption patches, and
        captions are kept inside the image (moved inside the box at the top border, shifted left
        at the right border).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_detections needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    # Low scores first, so the most confident boxes and captions end up on top.
    order = np.argsort(scores, kind="stable") if scores is not None else np.arange(len(boxes))
    for i in order:
        if scores is not None and scores[i] < score_threshold:
            continue
        if not np.isfinite(boxes[i]).all():
            continue
        label = int(labels[i])
        color = class_color(label)
        # continuous [x0, x1) -> the inclusive pixel range OpenCV draws
        x0 = int(np.clip(np.floor(boxes[i, 0]), 0, w - 1))
        y0 = int(np.clip(np.floor(boxes[i, 1]), 0, h - 1))
        x1 = int(np.clip(np.ceil(boxes[i, 2]) - 1, 0, w - 1))
        y1 = int(np.clip(np.ceil(boxes[i, 3]) - 1, 0, h - 1))
        if x1 < x0 or y1 < y0:
            continue
        # edges drawn inward (cv2.rectangle centres thick lines on the border, spilling outside)
        t = max(1, min(int(thickness), (x1 - x0) // 2 + 1, (y1 - y0) // 2 + 1))
        out[y0 : y0 + t, x0 : x1 + 1] = color
        out[y1 - t + 1 : y1 + 1, x0 : x1 + 1] = color
        out[y0 : y1 + 1, x0 : x0 + t] = color
        out[y0 : y1 + 1, x1 - t + 1 : x1 + 1] = color

        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else str(label)
        caption = name if scores is None else f"{name} {scores[i]:.2f}"
        (tw, th), base = cv2.getTextSize(caption, _FONT, font_scale, 1)
        bw, bh = min(tw + 4, w), min(th + base + 4, h)
        # above the box if there is room, else inside it just below the top edge
        top = y0 - bh if y0 - bh >= 0 else min(y0, h - bh)
        left = min(max(x0, 0), w - bw)
        out[top : top + bh, left : left + bw] = color
        cv2.putText(out, caption, (left + 2, top + bh - base - 2), _FONT, font_scale, _text_color(color), 1,
                    lineType=cv2.LINE_AA)
    return out


def save_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 RGB image (format from the suffix: .png, .jpg, ...)."""
    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: save_image needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(image).save(path)
    except (ValueError, KeyError) as e:  # PIL: unknown extension
        raise ValueError(f"{path}: cannot write an image with this file name ({e})") from None
    return path
