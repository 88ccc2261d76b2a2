"""Property-based tests (hypothesis) of VOC AP and the detections file.

VOC AP is compared with an independent, loop-by-loop implementation of the devkit's rules
(py-faster-rcnn's ``voc_eval`` shape), on random ground truth (some difficult) and detections.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from detkit.data.record import DetectionData, Record
from detkit.evaluation.detections import load_detections, save_detections
from detkit.evaluation.voc import evaluate_voc

K = 2


@st.composite
def scenes(draw):
    """Ground truth of a few 64x64 images and detections near (and away from) it, distinct scores."""
    n_img = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    records, dets = [], {}
    for i in range(n_img):
        g = int(rng.integers(0, 4))
        xy = rng.uniform(0, 40, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(4, 24, (g, 2))], 1).astype(np.float32)
        records.append(Record(image_id=i, file_name=f"im{i}.jpg", width=64, height=64, boxes=gt,
                              labels=rng.integers(0, K, g), difficult=rng.random(g) < 0.2, name=f"im{i}"))
        d = int(rng.integers(0, 6))
        near = gt[rng.integers(0, g, d)] + rng.normal(0, 3, (d, 4)) if g else rng.uniform(0, 60, (d, 4))
        near = np.sort(near.reshape(d, 2, 2), axis=1).reshape(d, 4)  # x0 <= x1, y0 <= y1 after the jitter
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 0.5)
        dets[i] = {"boxes": near.astype(np.float32), "labels": rng.integers(0, K, d)}
    total = sum(len(v["labels"]) for v in dets.values())
    scores = rng.permutation(total).astype(np.float32) / max(total, 1) + 0.01  # distinct: no tie order
    at = 0
    for v in dets.values():
        v["scores"] = scores[at: at + len(v["labels"])]
        at += len(v["labels"])
    return DetectionData(records=records, class_names=["a", "b"], name="random"), dets


def _iou(b, g):
    lt, rb = np.maximum(b[:2], g[:, :2]), np.minimum(b[2:], g[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    return inter / ((b[2:] - b[:2]).prod() + (g[:, 2:] - g[:, :2]).prod(1) - inter)


def reference_ap(data, dets, k, use_07):
    """The devkit's rules, one detection at a time (no vectorisation)."""
    gt = {r.image_id: (r.boxes[r.labels == k].astype(np.float64), r.difficult[r.labels == k]) for r in data.records}
    taken = {i: np.zeros(len(b), bool) for i, (b, _) in gt.items()}
    npos = sum(int((~d).sum()) for _, d in gt.values())
    items = [(float(s), i, b) for i, v in dets.items() for s, b, lab in zip(v["scores"], v["boxes"], v["labels"])
             if lab == k]
    items.sort(key=lambda t: -t[0])
    tp, fp = [], []
    for _, i, b in items:
        g, diff = gt[i]
        ov = _iou(b.astype(np.float64), g) if len(g) else np.zeros(0)
        if len(ov) and ov.max() > 0.5:
            j = int(ov.argmax())
            if diff[j]:
                continue
            tp.append(not taken[i][j])
            fp.append(taken[i][j])
            taken[i][j] = True
        else:
            tp.append(False)
            fp.append(True)
    if npos == 0:
        return math.nan
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec, prec = ctp / npos, ctp / np.maximum(ctp + cfp, 1e-12)
    if use_07:
        return sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(0, 1.1, 0.1)) / 11
    mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
    for j in range(len(mpre) - 2, -1, -1):
        mpre[j] = max(mpre[j], mpre[j + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


@given(scene=scenes(), use_07=st.booleans())
def test_voc_ap_is_in_0_1_and_equals_the_reference(scene, use_07):
    data, dets = scene
    result = evaluate_voc(dets, data, use_07_metric=use_07)
    for k in range(K):
        ref = reference_ap(data, dets, k, use_07)
        if math.isnan(ref):
            assert math.isnan(result.ap[k])
        else:
            assert 0.0 <= result.ap[k] <= 1.0
            assert abs(result.ap[k] - ref) < 1e-9, (k, result.ap[k], ref)


@given(scene=scenes())
def test_detections_file_round_trip(tmp_path_factory, scene):
    data, dets = scene
    path = tmp_path_factory.mktemp("dets") / "detections.json"
    save_detections(path, dets, data)
    back = load_detections(path, data)
    for i, v in dets.items():
        order = np.lexsort((np.arange(len(v["scores"])),))  # file order is detection order
        np.testing.assert_allclose(back[i]["boxes"], v["boxes"][order], atol=1e-3)
        np.testing.assert_array_equal(back[i]["scores"], v["scores"][order])
        np.testing.assert_array_equal(back[i]["labels"], v["labels"][order])
