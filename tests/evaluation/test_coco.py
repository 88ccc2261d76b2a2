"""COCO metrics through pycocotools: hand-checkable cases."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.data.record import DetectionData, Record
from detkit.evaluation.coco import COCO_METRICS, evaluate_coco, format_coco_table

BIG = [0.0, 0.0, 100.0, 100.0]      # area 10000 > 96^2: "large"
MED = [200.0, 200.0, 250.0, 240.0]  # area 2000: "medium"


def data_of(objs_per_image, class_names=("a", "b")):
    records = []
    for i, objs in enumerate(objs_per_image):
        records.append(Record(
            image_id=10 + i, file_name=f"img{i}.jpg", width=400, height=400,
            boxes=np.array([o[0] for o in objs], np.float32).reshape(-1, 4),
            labels=np.array([o[1] for o in objs], np.int64),
            difficult=np.array([o[2] if len(o) > 2 else False for o in objs], bool),
            iscrowd=np.array([o[3] if len(o) > 3 else False for o in objs], bool)))
    return DetectionData(records, list(class_names), category_ids=[3, 7], name="toy")


def dets_of(items):
    out = {}
    for image_index, box, label, score in items:
        d = out.setdefault(10 + image_index, ([], [], []))
        d[0].append(box), d[1].append(score), d[2].append(label)
    return {k: {"boxes": np.array(b, np.float32), "scores": np.array(s, np.float32),
                "labels": np.array(lab, np.int64)} for k, (b, s, lab) in out.items()}


def test_perfect_detections_score_one():
    data = data_of([[(BIG, 0), (MED, 1)], [(MED, 0)]])
    dets = dets_of([(0, BIG, 0, 0.9), (0, MED, 1, 0.8), (1, MED, 0, 0.7)])
    m = evaluate_coco(dets, data)
    for name in ("AP", "AP50", "AP75", "APm", "APl", "AR10", "AR100", "ARm", "ARl"):
        assert m[name] == pytest.approx(1.0), name
    assert m["APs"] == -1.0 and m["ARs"] == -1.0  # no small objects: COCOeval's "undefined"
    assert set(m) == set(COCO_METRICS)


def test_shifted_box_passes_iou_50_but_not_75():
    # Shift by 20 px: IoU = (80 * 100) / (120 * 100) = 2/3, so it matches at IoU thresholds
    # 0.50, 0.55, 0.60, 0.65 (4 of the 10 in 0.50:0.05:0.95) and no higher: AP = 0.4.
    data = data_of([[(BIG, 0)]])
    m = evaluate_coco(dets_of([(0, [20.0, 0.0, 120.0, 100.0], 0, 0.9)]), data)
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == 0.0
    assert m["AP"] == pytest.approx(0.4)


def test_crowd_and_difficult_ground_truth_are_ignored():
    # B is difficult (-> crowd in the converter): missing it costs no recall, hitting it no precision.
    data = data_of([[(BIG, 0), (MED, 0, True)]])
    only_a = dets_of([(0, BIG, 0, 0.9)])
    both = dets_of([(0, MED, 0, 0.95), (0, BIG, 0, 0.9)])
    assert evaluate_coco(only_a, data)["AP"] == pytest.approx(1.0)
    assert evaluate_coco(both, data)["AP"] == pytest.approx(1.0)
    # the same with iscrowd set directly
    crowd = data_of([[(BIG, 0), (MED, 0, False, True)]])
    assert evaluate_coco(both, crowd)["AP"] == pytest.approx(1.0)
    # control: B as an ordinary object -> missing it halves recall
    plain = data_of([[(BIG, 0), (MED, 0)]])
    assert evaluate_coco(only_a, plain)["AR100"] == pytest.approx(0.5)


def test_zero_detections_give_zeros_not_a_crash():
    data = data_of([[(BIG, 0)], []])
    m, text = evaluate_coco({}, data, return_text=True)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["APl"] == 0.0
    assert m["APm"] == -1.0  # no medium ground truth at all
    assert "Average Precision" in text
    m2 = evaluate_coco({10: {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                             "labels": np.zeros(0, np.int64)}}, data)
    assert m2 == m


def test_output_captured_unless_verbose(capsys):
    data = data_of([[(BIG, 0)]])
    dets = dets_of([(0, BIG, 0, 0.9)])
    evaluate_coco(dets, data)
    assert capsys.readouterr().out == ""
    evaluate_coco(dets, data, verbose=True)
    assert "Average Precision" in capsys.readouterr().out
    table = format_coco_table(evaluate_coco(dets, data))
    assert "AP50   1.0000" in table and "APs       n/a" in table
