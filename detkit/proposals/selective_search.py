"""Selective search (Uijlings et al., IJCV 2013): the region proposals of R-CNN, SPPNet and Fast R-CNN.

The algorithm is OpenCV's ``cv2.ximgproc.segmentation`` implementation (opencv-contrib): a
graph-based initial segmentation (Felzenszwalb & Huttenlocher), then hierarchical grouping of
neighbouring regions by colour, texture, size and fill similarity, diversified over colour spaces,
segmentation thresholds ``k`` and similarity strategies:

* ``"fast"`` (R-CNN's mode): HSV and Lab images x k in {base_k, base_k + inc_k, base_k + 2 inc_k}
  x strategies {colour+texture+size+fill, texture+size+fill};
* ``"quality"``: HSV, Lab, intensity, hue and rgI images x five k values x four strategies;
* ``"single"``: HSV, one k, one strategy (a quick look).

Around it, R-CNN's own post-processing (``selective_search_boxes.m``):

* the image is resized before the search because the proposals are not scale invariant and the
  search is slow on big images. R-CNN rescales every image to a **width of 500 px**; here the
  longer side is **shrunk** to ``max_side`` (never enlarged, so small images keep their detail),
  and the boxes are mapped back to the original image;
* boxes with a side shorter than ``min_size`` pixels **of the search image** are removed (R-CNN's
  ``minBoxWidth = 20``, measured on its 500-px image), then exact duplicates;
* the search's order is kept: it is a rough ranking (each region's hierarchy level times a random
  number). Note OpenCV ranks low levels (small regions) first, the inverse of the paper.

OpenCV draws that random number with the C library's ``rand()``; we seed it (``seed``) right
before the search so that the same image always gives the same boxes.
"""
from __future__ import annotations

import ctypes
import threading

import cv2
import numpy as np

__all__ = ["selective_search", "MODES"]

MODES = ("fast", "quality", "single")
# Below this many pixels on a side the segmentation has nothing to group: the whole image is the box.
_TINY_SIDE = 4

try:  # the process's C library: OpenCV's rank uses its global rand()
    _libc = ctypes.CDLL(None)
except OSError:  # Windows has no "current process" handle this way: the ranking stays unseeded
    _libc = None
_rand_lock = threading.Lock()  # rand()'s state is process-global


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"selective_search: image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"selective_search: image must be (H, W, 3) (or greyscale (H, W)), got {image.shape}")
    if image.shape[2] == 1:  # OpenCV's colour conversions need 3 channels
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def selective_search(
    image: np.ndarray,
    *,
    mode: str = "fast",
    max_side: int | None = 500,
    min_size: float = 20,
    max_proposals: int | None = None,
    base_k: int = 150,
    inc_k: int = 150,
    sigma: float = 0.8,
    seed: int = 1,
) -> np.ndarray:
    """Selective search proposals for one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (``(H, W)`` or ``(H, W, 1)`` greyscale is repeated to 3
            channels; a 4th alpha channel is dropped).
        mode: ``"fast"``, ``"quality"`` or ``"single"`` (module docstring).
        max_side: shrink the image so its longer side is at most this before searching (R-CNN
            searched ~500-px images); ``None`` searches at full size.
        min_size: remove boxes whose width or height is below this many pixels of the search image
            (R-CNN: 20). If nothing is left, the whole-image box is returned.
        max_proposals: keep at most this many (the first, in the search's order); ``None`` keeps all
            (R-CNN kept all, ~2000 per image in fast mode).
        base_k, inc_k, sigma: the graph segmentation's (Felzenszwalb & Huttenlocher) threshold
            ``k`` of the first segmentation, its step between the segmentations, and the Gaussian
            smoothing of the image before segmenting. Smaller ``k`` gives smaller initial regions,
            hence more boxes and a slower search. Defaults are OpenCV's (fast mode: k = 150, 300,
            450); R-CNN's MATLAB code used k = 50, 100. Measured densities: docs/rcnn_sppnet.md.
        seed: seeds the random part of the ranking (deterministic output).

    Returns:
        ``(P, 4)`` float32 boxes, xyxy, 0-based continuous coordinates of the **original** image,
        inside ``[0, W] x [0, H]``, no two equal, in the search's order. ``P >= 1``.
    """
    if mode not in MODES:
        raise ValueError(f"selective_search: mode must be one of {MODES}, got {mode!r}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"selective_search: max_side must be positive or None, got {max_side}")
    if max_proposals is not None and max_proposals < 1:
        raise ValueError(f"selective_search: max_proposals must be positive or None, got {max_proposals}")
    if base_k < 1 or inc_k < 0 or sigma < 0:
        raise ValueError(f"selective_search: need base_k >= 1, inc_k >= 0, sigma >= 0; got {base_k}, {inc_k}, {sigma}")
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    whole = np.array([[0, 0, w, h]], dtype=np.float32)
    if min(h, w) < _TINY_SIDE:
        return whole

    scale = 1.0
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # OpenCV's strategies convert from BGR
    if (sw, sh) != (w, h):
        bgr = cv2.resize(bgr, (sw, sh), interpolation=cv2.INTER_AREA)

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(bgr)
    if mode == "fast":
        ss.switchToSelectiveSearchFast(int(base_k), int(inc_k), float(sigma))
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality(int(base_k), int(inc_k), float(sigma))
    else:
        ss.switchToSingleStrategy(int(base_k), float(sigma))
    with _rand_lock:
        if _libc is not None:
            _libc.srand(int(seed))
        rects = np.asarray(ss.process(), dtype=np.int64).reshape(-1, 4)  # (x, y, w, h), pixel sets

    keep = (rects[:, 2] >= min_size) & (rects[:, 3] >= min_size)
    rects = rects[keep]
    # Exact duplicates (OpenCV already drops most); np.unique sorts, so restore the search's order.
    _, first = np.unique(rects, axis=0, return_index=True)
    rects = rects[np.sort(first)]
    if max_proposals is not None:
        rects = rects[:max_proposals]
    if len(rects) == 0:
        return whole

    # A pixel-set rect (x, y, w, h) is the continuous box (x, y, x + w, y + h); scaling it back to
    # the original image is then a plain multiplication.
    boxes = np.stack(
        [rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], axis=1
    ).astype(np.float64)
    boxes *= np.array([w / sw, h / sh, w / sw, h / sh])
    boxes = np.clip(boxes, 0, [w, h, w, h])
    return boxes.astype(np.float32)
