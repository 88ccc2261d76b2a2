"""Drawing: stable colours, pixels touched only on edges and captions, captions inside; PR PNG."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detkit.data.record import DetectionData, Record
from detkit.evaluation.voc import evaluate_voc
from detkit.visualization.draw import class_color, draw_detections, save_image
from detkit.visualization.pr_curves import plot_pr_curves


def grey(h=120, w=160):
    return np.full((h, w, 3), 128, np.uint8)


def test_colours_stable_and_distinct():
    colours = [class_color(k) for k in range(20)]
    assert colours == [class_color(k) for k in range(20)]
    assert len(set(colours)) == 20
    # the box edge of class 3 has class 3's colour, in any picture
    for img in (grey(), grey(80, 90)):
        out = draw_detections(img, [[10, 20, 50, 60]], [3], thickness=1)
        assert tuple(out[40, 10]) == class_color(3)  # left edge, below the caption


def test_pixels_change_only_on_edges_and_caption():
    img = grey()
    box = [40, 50, 100, 110]  # covers pixel columns 40..99, rows 50..109
    out = draw_detections(img, [box], [1], [0.93], ["dog"], thickness=2)
    changed = np.any(out != img, axis=2)
    assert not np.any(img != 128)  # input untouched
    inside = changed[53:107, 43:97]  # interior, 3 px away from each edge
    assert not inside.any()
    assert changed[50:110, 40].all() and changed[50:110, 99].all()  # vertical edges drawn
    assert changed[50, 40:100].all() and changed[109, 40:100].all()  # horizontal edges drawn
    # outside the box only the caption patch (above the box) changed
    outside = changed.copy()
    outside[50:110, 40:100] = False
    rows, cols = np.nonzero(outside)
    assert rows.max() < 50 and cols.min() >= 40
    assert np.array_equal(out[rows.min(), 45], class_color(1))


def test_caption_kept_inside_image_at_the_border():
    img = grey(60, 80)
    out = draw_detections(img, [[70, 0, 80, 30]], [0], [0.5], ["a_long_class_name"])
    changed = np.any(out != img, axis=2)
    # the caption is wider than the box: it is shifted left to stay in the picture and drawn
    # inside the box's top (no room above); it must not wrap or vanish
    assert changed[:, :70].any()
    assert changed[0:5, 0:70].any()


def test_score_threshold_and_validation():
    img = grey()
    out = draw_detections(img, [[10, 10, 30, 30], [60, 60, 90, 90]], [0, 1], [0.2, 0.9], score_threshold=0.5)
    changed = np.any(out != img, axis=2)
    assert not changed[10:30, 10:30].any() and changed[60:90, 60].all()
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(img.astype(np.float32), [], [])
    with pytest.raises(ValueError, match="labels"):
        draw_detections(img, [[0, 0, 1, 1]], [0, 1])


def test_save_image_round_trip(tmp_path):
    img = draw_detections(grey(), [[5, 5, 60, 60]], [2], [0.7], ["x", "y", "z"])
    p = save_image(tmp_path / "out" / "a.png", img)
    assert np.array_equal(np.asarray(Image.open(p)), img)
    with pytest.raises(ValueError, match="a.png"):
        save_image(tmp_path / "a.png", img[..., 0])


def test_pr_curve_png_written(tmp_path):
    recs = [Record(1, "a.jpg", 100, 100, [[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    data = DetectionData(recs, ["a", "b", "c"])
    dets = {1: {"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 40, 40]], np.float32),
                "scores": np.array([0.9, 0.8, 0.7], np.float32), "labels": np.array([0, 0, 1])}}
    result = evaluate_voc(dets, data)
    p = plot_pr_curves(result, tmp_path / "pr" / "curves.png")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size == (700, 600)
        px = np.asarray(im.convert("RGB"))
    assert (px != 255).any(axis=2).mean() > 0.01  # something was drawn
