"""Selective search: boxes inside the image for any input, finds flat objects, R-CNN's filtering."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detkit.proposals.selective_search import selective_search


def _two_rectangles() -> tuple[np.ndarray, np.ndarray]:
    """A flat grey 120x160 image with a red and a blue rectangle; returns (image, (2, 4) boxes)."""
    img = np.full((120, 160, 3), 200, np.uint8)
    img[20:60, 30:90] = (220, 30, 30)
    img[70:110, 100:150] = (30, 30, 220)
    return img, np.array([[30, 20, 90, 60], [100, 70, 150, 110]], np.float32)


def _inside(boxes: np.ndarray, h: int, w: int) -> bool:
    return bool((boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 2] <= w).all()
                and (boxes[:, 3] <= h).all() and (boxes[:, 2] > boxes[:, 0]).all()
                and (boxes[:, 3] > boxes[:, 1]).all())


@pytest.mark.parametrize("shape", [(48, 64, 3), (48, 64), (48, 64, 1), (5, 7, 3), (2, 3)])
def test_boxes_inside_image(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    boxes = selective_search(img, min_size=4)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
    assert _inside(boxes, shape[0], shape[1])


def test_tiny_image_falls_back_to_whole_box():
    img = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    # every region of a 5x7 image is below R-CNN's 20 px: only the whole image remains
    np.testing.assert_array_equal(selective_search(img), [[0, 0, 7, 5]])


@pytest.mark.parametrize("mode", ["fast", "single"])
def test_finds_flat_rectangles(mode):
    img, gt = _two_rectangles()
    boxes = selective_search(img, mode=mode)
    best = box_iou(torch.from_numpy(gt), torch.from_numpy(boxes)).max(dim=1).values
    assert (best > 0.8).all(), best


def test_resize_maps_boxes_back():
    img, gt = _two_rectangles()
    big = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)  # 480 x 640; searched at 120 x 160
    boxes = selective_search(big, max_side=160, min_size=10)
    assert _inside(boxes, 480, 640)
    best = box_iou(torch.from_numpy(gt * 4), torch.from_numpy(boxes)).max(dim=1).values
    assert (best > 0.8).all(), best
    # the search image is a quarter of the size, so every box is a multiple of 4 original pixels
    np.testing.assert_array_equal(boxes % 4, 0)


def test_small_boxes_removed_and_no_duplicates():
    img = np.random.default_rng(2).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    all_boxes = selective_search(img, min_size=0)
    big = selective_search(img, min_size=15)
    sides = np.minimum(big[:, 2] - big[:, 0], big[:, 3] - big[:, 1])
    assert (sides >= 15).all()
    # the filter only removes: the kept boxes are the large ones of the unfiltered list, in order
    all_sides = np.minimum(all_boxes[:, 2] - all_boxes[:, 0], all_boxes[:, 3] - all_boxes[:, 1])
    np.testing.assert_array_equal(big, all_boxes[all_sides >= 15])
    assert len(big) < len(all_boxes)
    assert len(np.unique(all_boxes, axis=0)) == len(all_boxes)


def test_deterministic_and_capped():
    img = np.random.default_rng(3).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    a = selective_search(img, min_size=5)
    b = selective_search(img, min_size=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(selective_search(img, min_size=5, max_proposals=7), a[:7])


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        selective_search(np.zeros((8, 8, 3), np.uint8), mode="slow")
    with pytest.raises(ValueError, match="uint8"):
        selective_search(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="base_k >= 1"):
        selective_search(np.zeros((8, 8, 3), np.uint8), base_k=0)


def test_smaller_k_gives_more_boxes():
    # Smooth random blobs: the graph segmentation's k decides how finely they are cut at first.
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 256, size=(12, 16, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    coarse = selective_search(img, mode="fast", min_size=4, base_k=300, inc_k=300)
    fine = selective_search(img, mode="fast", min_size=4, base_k=20, inc_k=20)
    assert len(fine) > len(coarse)  # the parameters reach OpenCV
