"""Anchor sizes fitted to the training boxes (method.model.anchor_sizes=auto)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detkit.data.record import DetectionData, Record
from detkit.proposals.anchor_fit import box_sides, fit_anchor_sizes


def test_sizes_span_the_percentiles_with_at_most_a_factor_two_between():
    rng = np.random.default_rng(0)
    sides = np.exp(rng.uniform(math.log(30), math.log(400), 5000))
    sizes = fit_anchor_sizes(sides)
    assert sizes == sorted(sizes) and len(sizes) >= 2
    assert sizes[0] == pytest.approx(np.percentile(sides, 2), abs=1)
    assert sizes[-1] == pytest.approx(np.percentile(sides, 98), abs=1)
    ratios = np.array(sizes[1:]) / np.array(sizes[:-1])
    assert (ratios <= 2.0 + 0.02).all()  # rounding to whole pixels aside
    assert len(sizes) == math.ceil(math.log2(sizes[-1] / sizes[0]) - 1e-9) + 1


def test_small_objects_get_small_anchors_but_not_below_the_stride():
    assert fit_anchor_sizes(np.full(100, 40.0)) == [40.0]
    assert fit_anchor_sizes(np.full(100, 5.0))[0] == 16.0
    assert len(fit_anchor_sizes(np.geomspace(16, 16 * 2**10, 200), max_sizes=4)) == 4


def test_no_boxes_gives_the_paper_sizes_and_bad_settings_are_refused():
    assert fit_anchor_sizes(np.zeros(0)) == [128.0, 256.0, 512.0]
    with pytest.raises(ValueError, match="^fit_anchor_sizes: "):
        fit_anchor_sizes(np.ones(3), low=50, high=10)


def test_box_sides_are_measured_at_the_training_scale():
    # 200 x 100 image, shorter side 100 -> 300 (x3) unless the longer side would pass 500 (x2.5)
    rec = Record(image_id=0, file_name="a.jpg", width=200, height=100,
                 boxes=np.array([[0, 0, 10, 40], [5, 5, 5, 9]], np.float32), labels=[0, 0])
    data = DetectionData(records=[rec], class_names=["x"])
    np.testing.assert_allclose(box_sides(data, min_size=300, max_size=1000), [3 * 20.0])
    np.testing.assert_allclose(box_sides(data, min_size=[200, 300, 400], max_size=500), [2.5 * 20.0])
