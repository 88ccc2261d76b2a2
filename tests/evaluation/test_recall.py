"""Proposal recall and MABO against a hand computation on two images."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.data.record import DetectionData, Record
from detkit.evaluation.recall import proposal_recall


def _data() -> DetectionData:
    img0 = Record(image_id=0, file_name="0.jpg", width=200, height=200, name="0",
                  boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], labels=[0, 1, 0],
                  difficult=[False, False, True])  # the third is difficult: left out
    img1 = Record(image_id=1, file_name="1.jpg", width=200, height=200, name="1",
                  boxes=[[0, 0, 20, 20]], labels=[1])
    return DetectionData(records=[img0, img1], class_names=["a", "b"], name="toy")


PROPOSALS = {
    0: np.array([[0, 0, 10, 5],      # IoU 0.5 with gt A
                 [0, 0, 10, 10],     # IoU 1.0 with A
                 [20, 20, 30, 25],   # IoU 0.5 with gt B
                 [40, 40, 50, 50]],  # only the difficult gt
                np.float32),
    1: np.array([[0, 0, 20, 14],     # IoU 280/400 = 0.7 with gt D
                 [100, 100, 110, 110]], np.float32),
}


def test_hand_worked_recall_and_mabo():
    res = proposal_recall(PROPOSALS, _data(), counts=(1, 2, 10))
    assert res["num_images"] == 2 and res["num_gt"] == 3 and res["mean_proposals"] == 3.0
    rows = {row["count"]: row for row in res["rows"]}
    assert list(rows) == [1, 2, 10, "all"]
    # best overlaps (A, B, D): N=1 (0.5, 0, 0.7); N=2 (1, 0, 0.7); N>=3 (1, 0.5, 0.7)
    expected = {
        1: ({"0.5": 2 / 3, "0.7": 1 / 3}, {"a": 0.5, "b": 0.35}, 1.2 / 3),
        2: ({"0.5": 2 / 3, "0.7": 2 / 3}, {"a": 1.0, "b": 0.35}, 1.7 / 3),
        10: ({"0.5": 1.0, "0.7": 2 / 3}, {"a": 1.0, "b": 0.6}, 2.2 / 3),
        "all": ({"0.5": 1.0, "0.7": 2 / 3}, {"a": 1.0, "b": 0.6}, 2.2 / 3),
    }
    for n, (recall, class_abo, abo) in expected.items():
        assert rows[n]["recall"] == pytest.approx(recall), n
        assert rows[n]["class_abo"] == pytest.approx(class_abo), n
        # MABO averages the classes (Uijlings); ABO averages the ground truths
        assert rows[n]["mabo"] == pytest.approx(np.mean(list(class_abo.values()))), n
        assert rows[n]["abo"] == pytest.approx(abo), n


def test_image_without_proposals_counts_as_missed():
    props = {0: PROPOSALS[0], 1: np.zeros((0, 4), np.float32)}
    res = proposal_recall(props, _data(), counts=(10,))
    assert res["rows"][0]["recall"]["0.5"] == pytest.approx(2 / 3)  # D missed
    assert res["rows"][0]["class_abo"]["b"] == pytest.approx(0.25)


def test_missing_image_is_an_error():
    with pytest.raises(ValueError, match="toy: no proposals for 1 of 2 images"):
        proposal_recall({0: PROPOSALS[0]}, _data())
