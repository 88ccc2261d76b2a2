"""VOC AP: one hand-computed case per devkit rule, and an independent loop implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detkit.data.record import DetectionData, Record
from detkit.evaluation.voc import devkit_overlaps, evaluate_voc, format_voc_table, voc_ap


def make_data(gts, class_names=("a",)):
    """``gts``: per image a list of ``(box, label, difficult)``."""
    records = []
    for i, objs in enumerate(gts):
        records.append(Record(
            image_id=100 + i, file_name=f"/x/{i:06d}.jpg", width=100, height=100,
            boxes=np.array([o[0] for o in objs], np.float32).reshape(-1, 4),
            labels=np.array([o[1] for o in objs], np.int64),
            difficult=np.array([o[2] for o in objs], bool), name=f"{i:06d}"))
    return DetectionData(records, list(class_names), name="toy")


def dets(*items):
    """``items``: ``(image_index, box, score, label)`` -> detections dict keyed by image_id."""
    out: dict[int, dict[str, list]] = {}
    for i, box, score, label in items:
        d = out.setdefault(100 + i, {"boxes": [], "scores": [], "labels": []})
        d["boxes"].append(box), d["scores"].append(score), d["labels"].append(label)
    return {k: {"boxes": np.array(v["boxes"], np.float32).reshape(-1, 4),
                "scores": np.array(v["scores"], np.float32),
                "labels": np.array(v["labels"], np.int64)} for k, v in out.items()}


A = [10, 10, 50, 50]
B = [60, 60, 90, 95]


def both_aps(d, data):
    return (evaluate_voc(d, data, use_07_metric=True).ap[0], evaluate_voc(d, data, use_07_metric=False).ap[0])


def test_perfect_detector_ap_one():
    data = make_data([[(A, 0, False), (B, 0, False)], [(B, 0, False)]])
    d = dets((0, A, 0.9, 0), (0, B, 0.8, 0), (1, B, 0.7, 0))
    r = evaluate_voc(d, data)
    assert r.ap[0] == pytest.approx(1.0) and r.map == pytest.approx(1.0)
    np.testing.assert_allclose(r.recall[0], [1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(r.precision[0], [1, 1, 1])
    assert evaluate_voc(d, data, use_07_metric=False).ap[0] == pytest.approx(1.0)


def test_duplicate_detection_is_false_positive():
    data = make_data([[(A, 0, False)], [(B, 0, False)]])
    # TP (0.9), duplicate of the same gt (0.8) -> FP, TP in image 1 (0.7).
    d = dets((0, A, 0.9, 0), (0, [11, 10, 50, 50], 0.8, 0), (1, B, 0.7, 0))
    r = evaluate_voc(d, data)
    np.testing.assert_allclose(r.recall[0], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r.precision[0], [1.0, 0.5, 2 / 3])
    # 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3. (6 + 10/3) / 11 = 28/33.
    # area: 0.5 * 1 + 0.5 * 2/3 = 5/6.
    assert both_aps(d, data) == pytest.approx((28 / 33, 5 / 6))


def test_difficult_match_is_neither_tp_nor_fp():
    data = make_data([[(A, 0, False)], [(B, 0, True)], []])
    plain = dets((0, A, 0.9, 0), (2, A, 0.8, 0))
    # Two detections on the difficult gt (the second a duplicate), scored above everything: ignored.
    with_difficult = dets((1, B, 0.95, 0), (1, B, 0.93, 0), (0, A, 0.9, 0), (2, A, 0.8, 0))
    r0, r1 = evaluate_voc(plain, data), evaluate_voc(with_difficult, data)
    assert r1.npos[0] == 1
    assert r1.ap[0] == pytest.approx(r0.ap[0]) == pytest.approx(1.0)
    # Ignored detections add no step: TP/FP counts after them are unchanged.
    np.testing.assert_allclose(r1.precision[0][2:], r0.precision[0])
    np.testing.assert_allclose(r1.recall[0][2:], r0.recall[0])
    assert evaluate_voc(with_difficult, data, use_07_metric=False).ap[0] == pytest.approx(1.0)


def test_detections_in_image_without_ground_truth_are_false_positives():
    data = make_data([[(A, 0, False)], []])
    d = dets((1, A, 0.95, 0), (0, A, 0.9, 0))
    r = evaluate_voc(d, data)
    np.testing.assert_allclose(r.recall[0], [0.0, 1.0])
    np.testing.assert_allclose(r.precision[0], [0.0, 0.5])
    assert both_aps(d, data) == pytest.approx((0.5, 0.5))  # max precision at any recall is 1/2


def test_class_without_detections_has_ap_zero_and_class_without_gt_is_nan():
    data = make_data([[(A, 0, False), (B, 1, False)], []], class_names=("a", "b", "c"))
    d = dets((0, A, 0.9, 0), (1, B, 0.5, 2))  # nothing for "b"; "c" has a detection but no gt
    r = evaluate_voc(d, data)
    assert r.ap[0] == pytest.approx(1.0) and r.ap[1] == 0.0 and math.isnan(r.ap[2])
    assert list(r.npos) == [1, 1, 0] and list(r.num_detections) == [1, 0, 1]
    assert r.map == pytest.approx(0.5)  # NaN class left out of the mean
    table = format_voc_table(r)
    assert "n/a" in table and "0.5000" in table.splitlines()[-1]
    assert r.to_dict()["per_class"]["c"]["ap"] is None


def test_overlap_exactly_half_is_not_a_match():
    # VOC 1-based inclusive gt (1,1,30,10) = 300 px; det (11,1,40,10) = 300 px; intersection
    # columns 11..30 = 20 x 10 = 200; union 400; "+1" IoU = 0.5 exactly. In detkit coords
    # (x - 1 for the minimum): gt (0,0,30,10), det (10,0,40,10).
    gt, det = [0, 0, 30, 10], [10, 0, 40, 10]
    assert devkit_overlaps(np.array(det), np.array(gt)) == 0.5
    data = make_data([[(gt, 0, False)]])
    assert evaluate_voc(dets((0, det, 0.9, 0)), data).ap[0] == 0.0
    assert evaluate_voc(dets((0, det, 0.9, 0)), data, iou_threshold=0.49).ap[0] == pytest.approx(1.0)
    # one more pixel of overlap (det (10,1,40,11) 1-based... i.e. det starts one column earlier)
    assert evaluate_voc(dets((0, [9, 0, 40, 10], 0.9, 0)), data).ap[0] == pytest.approx(1.0)


def test_plus_one_rule_equals_continuous_iou():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (200, 2))
    wh = rng.uniform(0.5, 40, (200, 2))
    a = np.concatenate([xy, xy + wh], 1)
    b = a[rng.permutation(200)] + rng.normal(0, 5, (200, 4)).clip(-3, 3)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 0.1)
    ours = devkit_overlaps(a[:, None], b[None])
    ref = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # and by hand on integer VOC indices: (1,1,10,10) vs (6,1,15,10): 5*10 / (100+100-50) = 1/3
    assert devkit_overlaps(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(1 / 3)


def test_voc_ap_by_hand():
    # TP, FP, TP, TP with npos = 4.
    rec = np.array([0.25, 0.25, 0.5, 0.75])
    prec = np.array([1.0, 0.5, 2 / 3, 0.75])
    # 11-point: t = 0, .1, .2 -> max prec at rec >= t = 1; t = .3 .. .7 (5 points) -> 0.75
    # (rec 0.5 and 0.75 qualify, max(2/3, 3/4)); t = .8, .9, 1 -> no recall that high: 0.
    # AP = (3 * 1 + 5 * 0.75) / 11 = 6.75 / 11.
    assert voc_ap(rec, prec, True) == pytest.approx(6.75 / 11)
    # area: envelope over recall steps 0->.25: 1, .25->.5: .75, .5->.75: .75, .75->1: 0
    # AP = .25 + .1875 + .1875 = 0.625
    assert voc_ap(rec, prec, False) == pytest.approx(0.625)
    assert voc_ap(np.zeros(0), np.zeros(0), True) == 0.0 == voc_ap(np.zeros(0), np.zeros(0), False)


def test_voc07_thresholds_follow_the_port_rounding():
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 > 0.3, so a recall of exactly 0.3 only
    # counts for t = 0, .1, .2: AP = 3/11 (the devkit ports give the same).
    assert voc_ap(np.array([0.3]), np.array([1.0]), True) == pytest.approx(3 / 11)
    assert voc_ap(np.array([0.3]), np.array([1.0]), False) == pytest.approx(0.3)


def test_ties_keep_record_then_detection_order():
    data = make_data([[(A, 0, False)]])
    fp_first = dets((0, B, 0.5, 0), (0, A, 0.5, 0))
    tp_first = dets((0, A, 0.5, 0), (0, B, 0.5, 0))
    assert both_aps(tp_first, data) == pytest.approx((1.0, 1.0))
    # FP first: recall [0, 1], precision [0, 0.5] -> AP 0.5 both ways
    assert both_aps(fp_first, data) == pytest.approx((0.5, 0.5))


def test_unknown_image_id_and_bad_label_raise():
    data = make_data([[(A, 0, False)]])
    with pytest.raises(ValueError, match="image_id 7"):
        evaluate_voc({7: dets((0, A, 0.5, 0))[100]}, data)
    with pytest.raises(ValueError, match="label"):
        evaluate_voc(dets((0, A, 0.5, 3)), data)


# ---- independent reference: the devkit loop, written out plainly ------------------------------

def reference_voc(detections, data, thr, use_07):
    aps = []
    for k in range(data.num_classes):
        gts, npos = {}, 0
        for r in data.records:
            objs = [(list(map(float, b)), bool(d or c)) for b, l, d, c in
                    zip(r.boxes, r.labels, r.difficult, r.iscrowd) if l == k]
            gts[r.image_id] = {"objs": objs, "det": [False] * len(objs)}
            npos += sum(1 for _, dif in objs if not dif)
        cand = []
        for r in data.records:
            d = detections.get(r.image_id)
            if d is None:
                continue
            for box, s, l in zip(d["boxes"], d["scores"], d["labels"]):
                if l == k:
                    cand.append((r.image_id, [float(v) for v in box], float(s)))
        cand = sorted(cand, key=lambda c: -c[2])  # Python's sort is stable
        tp, fp = [], []
        for image_id, (x0, y0, x1, y1), _ in cand:
            bb = (x0 + 1, y0 + 1, x1, y1)  # back to 1-based inclusive indices
            g = gts[image_id]
            ovmax, jmax = -math.inf, -1
            for j, ((gx0, gy0, gx1, gy1), _) in enumerate(g["objs"]):
                gb = (gx0 + 1, gy0 + 1, gx1, gy1)
                iw = min(bb[2], gb[2]) - max(bb[0], gb[0]) + 1
                ih = min(bb[3], gb[3]) - max(bb[1], gb[1]) + 1
                if iw > 0 and ih > 0:
                    ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                          + (gb[2] - gb[0] + 1) * (gb[3] - gb[1] + 1) - iw * ih)
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            if ovmax > thr:
                if g["objs"][jmax][1]:
                    tp.append(0), fp.append(0)
                elif not g["det"][jmax]:
                    g["det"][jmax] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            aps.append(math.nan)
            continue
        ctp = np.cumsum(tp, dtype=float)
        cfp = np.cumsum(fp, dtype=float)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
        if use_07:
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                ps = [p for p, rr in zip(prec, rec) if rr >= t]
                ap += (max(ps) if ps else 0.0) / 11
        else:
            mrec = [0.0, *rec, 1.0]
            mpre = [0.0, *prec, 0.0]
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
        aps.append(ap)
    return np.array(aps)


def random_case(seed):
    rng = np.random.default_rng(seed)
    k = 3
    records, detections = [], {}
    for i in range(12):
        n = int(rng.integers(0, 6))
        xy = rng.integers(0, 60, (n, 2))
        wh = rng.integers(8, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)  # integer VOC-like boxes
        labels = rng.integers(0, k, n)
        difficult = rng.random(n) < 0.2
        records.append(Record(i * 3 + 1, f"{i}.jpg", 100, 100, boxes, labels, difficult))
        m = int(rng.integers(0, 8))
        # most near a gt (jittered; several per gt -> duplicates), the rest random
        idx = rng.integers(0, max(n, 1), m)
        src = boxes[idx] if n else np.zeros((m, 4), np.float32)
        near = (rng.random(m) < 0.6) & (n > 0)
        rand = np.concatenate([rng.uniform(0, 60, (m, 2)), rng.uniform(0, 60, (m, 2)) + 61], 1)
        db = np.where(near[:, None], src + rng.normal(0, 2, (m, 4)), rand).astype(np.float32)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dl = np.where(near & (rng.random(m) < 0.8), labels[idx] if n else 0, rng.integers(0, k, m))
        scores = np.round(rng.random(m), 1).astype(np.float32)  # coarse scores -> many ties
        detections[i * 3 + 1] = {"boxes": db, "scores": scores, "labels": dl.astype(np.int64)}
    return detections, DetectionData(records, ["x", "y", "z"], name=f"random{seed}")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_07", [True, False])
def test_agrees_with_independent_loop(seed, use_07):
    detections, data = random_case(seed)
    for thr in (0.5, 0.3):
        ours = evaluate_voc(detections, data, iou_threshold=thr, use_07_metric=use_07).ap
        ref = reference_voc(detections, data, thr, use_07)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)
        assert np.isfinite(ref).any()
