"""Augmentation: the Fast R-CNN resize rule, flips, jitter, and dropping boxes with their fields."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.data.transforms import build_transforms, fast_rcnn_scale


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _call(t, image, boxes, labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    labels = np.arange(n, dtype=np.int64) if labels is None else labels
    return t(image, boxes, labels=labels, difficult=np.zeros(n, bool), iscrowd=np.zeros(n, bool))


@pytest.mark.parametrize(
    "hw, expected",
    [((480, 640), (600, 800)),  # shorter side 480 -> 600: scale 1.25, longer 800 <= 1000
     ((500, 2000), (250, 1000)),  # 600/500 = 1.2 would make 2400 > 1000: capped at 1000/2000
     ((640, 480), (800, 600))],  # portrait: same rule on the other axis
)
def test_scale_rule_sizes(hw, expected):
    h, w = hw
    s = fast_rcnn_scale(h, w, 600, 1000)
    assert s == pytest.approx(min(600 / min(h, w), 1000 / max(h, w)))
    out = _call(build_transforms(train=False), _image(h, w), [[0, 0, 10, 10]])
    assert out["size"] == expected
    assert out["image"].shape == (*expected, 3)
    assert out["orig_size"] == (h, w)


def test_resized_box_by_hand_and_mapped_back():
    # 480x640 -> 600x800, scale 1.25 on both axes.
    out = _call(build_transforms(train=False), _image(480, 640), [[10, 20, 110, 220]])
    np.testing.assert_allclose(out["boxes"], [[12.5, 25.0, 137.5, 275.0]], rtol=1e-5)
    # 500x2000 -> 250x1000, scale 0.5; mapping back with orig/size per axis recovers the box.
    box = np.array([[100, 50, 1900, 450]], np.float32)
    out = _call(build_transforms(train=False), _image(500, 2000), box)
    np.testing.assert_allclose(out["boxes"], box * 0.5, rtol=1e-5)
    (h, w), (hr, wr) = out["orig_size"], out["size"]
    back = out["boxes"] * np.array([w / wr, h / hr, w / wr, h / hr], np.float32)
    np.testing.assert_allclose(back, box, rtol=1e-5)


def test_horizontal_flip_by_hand():
    img = _image(480, 640)
    # min_size 480 on a 480x640 image: scale 1, so only the flip acts.
    t = build_transforms(train=True, min_size=480, hflip_prob=1.0, color_jitter=None, seed=0)
    out = _call(t, img, [[10, 20, 110, 220], [600, 0, 640, 480]])
    # Continuous coords: x -> W - x, so [x0, x1] -> [W - x1, W - x0].
    np.testing.assert_allclose(out["boxes"], [[530, 20, 630, 220], [0, 0, 40, 480]], atol=1e-3)
    np.testing.assert_array_equal(out["image"], img[:, ::-1])
    np.testing.assert_array_equal(out["labels"], [0, 1])


def test_test_pipeline_is_deterministic_and_photometrically_neutral():
    img = _image(480, 640)
    t = build_transforms(train=False, min_size=480)
    a, b = _call(t, img, [[1, 2, 30, 40]]), _call(t, img, [[1, 2, 30, 40]])
    np.testing.assert_array_equal(a["image"], img)  # scale 1, no flip, no jitter
    np.testing.assert_array_equal(a["boxes"], b["boxes"])


def test_color_jitter_changes_pixels_not_boxes():
    img = _image(100, 120)
    jitter = {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1, "p": 1.0}
    t = build_transforms(train=True, min_size=100, hflip_prob=0.0, color_jitter=jitter, seed=1)
    out = _call(t, img, [[5, 5, 50, 60]])
    assert not np.array_equal(out["image"], img)
    np.testing.assert_allclose(out["boxes"], [[5, 5, 50, 60]], atol=1e-3)


def test_vanished_boxes_drop_labels_and_flags_together():
    # Scale 1.25 (480x640 -> 600x800). Box widths: 40 (kept), 0.5 -> 0.625 px (dropped: sub-pixel
    # after resize), 0 (dropped: empty in the file), 0.9 -> 1.125 px (kept: judged after resize),
    # 30 (kept).
    boxes = np.array([[10, 10, 50, 50], [100, 100, 100.5, 140], [200, 200, 200, 260],
                      [300, 10, 300.9, 60], [400, 300, 430, 330]], np.float32)
    labels = np.array([7, 8, 9, 10, 11], np.int64)
    difficult = np.array([True, False, True, False, False])
    iscrowd = np.array([False, True, False, True, False])
    truncated = np.array([False, False, False, False, True])
    t = build_transforms(train=False)
    out = t(_image(480, 640), boxes, labels=labels, difficult=difficult, iscrowd=iscrowd, truncated=truncated)
    kept = [0, 3, 4]
    np.testing.assert_allclose(out["boxes"], boxes[kept] * 1.25, rtol=1e-5)
    np.testing.assert_array_equal(out["labels"], labels[kept])
    np.testing.assert_array_equal(out["difficult"], difficult[kept])
    np.testing.assert_array_equal(out["iscrowd"], iscrowd[kept])
    np.testing.assert_array_equal(out["truncated"], truncated[kept])


def test_boxes_dropped_after_downscale_and_empty_input():
    # 500x2000 -> scale 0.5: a 1.5 px wide box becomes 0.75 px and is dropped.
    boxes = [[10, 10, 11.5, 40], [0, 0, 20, 20]]
    out = _call(build_transforms(train=False), _image(500, 2000), boxes, np.array([3, 4]))
    np.testing.assert_array_equal(out["labels"], [4])
    out = _call(build_transforms(train=True, seed=0), _image(60, 80), np.zeros((0, 4)))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)


def test_multiscale_draws_only_allowed_scales_and_test_uses_largest():
    scales = (200, 300, 400)
    t = build_transforms(train=True, min_size=scales, max_size=1000, seed=3)
    seen = {_call(t, _image(48, 64), [[1, 1, 20, 20]])["size"][0] for _ in range(40)}
    assert seen == set(scales)  # every allowed shorter side occurs, nothing else
    out = _call(build_transforms(train=False, min_size=scales), _image(48, 64), [[1, 1, 20, 20]])
    assert out["size"] == (400, 533)  # max(min_size) at test; 64 * 400/48 = 533.3 -> 533


@pytest.mark.parametrize(
    "kwargs, match",
    [({"min_size": 0}, "min_size"), ({"min_size": []}, "min_size"), ({"max_size": -5}, "max_size"),
     ({"hflip_prob": 1.5}, "hflip_prob"), ({"color_jitter": {"gamma": 0.1}}, "gamma")],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_transforms(train=True, **kwargs)


def test_mismatched_field_length_is_an_error():
    t = build_transforms(train=False)
    with pytest.raises(ValueError, match="labels"):
        t(_image(20, 20), np.zeros((2, 4), np.float32) + [0, 0, 5, 5], labels=np.zeros(3, np.int64))


def test_box_safe_crop_keeps_every_box_and_zooms_in():
    img = _image(300, 400)
    boxes = np.array([[150, 100, 200, 160], [220, 140, 260, 200]], np.float32)
    t = build_transforms(train=True, min_size=300, max_size=10_000, hflip_prob=0.0, color_jitter=None,
                         crop_prob=1.0, seed=0)
    union = np.array([150, 100, 260, 200], np.float32)
    zoomed = 0
    for _ in range(30):
        out = _call(t, img, boxes)
        np.testing.assert_array_equal(out["labels"], [0, 1])  # nothing cut, nothing dropped
        (hr, wr) = out["size"]
        assert min(hr, wr) == 300  # the crop is resized to the training scale
        b = out["boxes"]
        assert (b[:, :2] >= -1e-3).all() and (b[:, 2] <= wr + 1e-3).all() and (b[:, 3] <= hr + 1e-3).all()
        # one zoom factor s for both boxes: sizes scale alike, the boxes keep their relative layout
        s = (b[0, 2] - b[0, 0]) / 50
        np.testing.assert_allclose(b[:, 2:] - b[:, :2], (boxes[:, 2:] - boxes[:, :2]) * s, rtol=2e-2)
        np.testing.assert_allclose(b[1, :2] - b[0, :2], (boxes[1, :2] - boxes[0, :2]) * s, rtol=2e-2, atol=0.5)
        assert s >= 1 - 1e-3 and s <= 300 / (union[3] - union[1]) + 1e-3  # never past the union's height
        zoomed += s > 1.05
    assert zoomed > 20  # a crop nearly every time
    off = build_transforms(train=True, min_size=300, max_size=10_000, hflip_prob=0.0, color_jitter=None, seed=0)
    assert _call(off, img, boxes)["size"] == (300, 400)  # crop_prob 0 (default): the whole image
    test = build_transforms(train=False, min_size=300, max_size=10_000, crop_prob=1.0)
    np.testing.assert_allclose(_call(test, img, boxes)["boxes"], boxes)  # never at test time
    empty = _call(t, img, np.zeros((0, 4)))
    assert empty["size"] == (300, 400) and empty["boxes"].shape == (0, 4)


def test_crop_prob_must_be_a_probability():
    with pytest.raises(ValueError, match="crop_prob"):
        build_transforms(train=True, crop_prob=1.5)
