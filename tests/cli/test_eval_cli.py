"""tools/eval.py end to end on a tiny generated VOC set (and on bccd's ground truth if present)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EVAL = REPO / "tools" / "eval.py"


def run_eval(*args, cwd=REPO):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(EVAL), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def write_voc(root: Path, images: dict[str, list[tuple[str, tuple[int, int, int, int], int]]]):
    """VOC layout; objects are (name, 1-based inclusive (xmin, ymin, xmax, ymax), difficult)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objs in images.items():
        Image.fromarray(np.full((120, 120, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objects = "".join(
            f"<object><name>{n}</name><truncated>0</truncated><difficult>{d}</difficult><bndbox>"
            f"<xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for n, b, d in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>120</width><height>120</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(images) + "\n")


@pytest.fixture
def toy(tmp_path):
    root = tmp_path / "voc"
    write_voc(root, {
        "000001": [("cat", (11, 11, 50, 50), 0), ("dog", (61, 21, 90, 80), 0)],
        "000002": [("cat", (5, 5, 40, 40), 1), ("dog", (50, 50, 100, 100), 0)],
        "000003": [],
    })
    # classes sorted -> cat = category 1, dog = 2; bbox = [xmin - 1, ymin - 1, w, h]
    dets = [
        {"file_name": "000001.jpg", "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},   # TP
        {"file_name": "000002.jpg", "category_id": 1, "bbox": [4, 4, 36, 36], "score": 0.8},     # difficult
        {"file_name": "000003.jpg", "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.7},   # FP
        {"file_name": "000001.jpg", "category_id": 2, "bbox": [60, 20, 30, 60], "score": 0.95},  # TP
        {"file_name": "000002.jpg", "category_id": 2, "bbox": [79, 49, 51, 51], "score": 0.6},   # FP (IoU .26)
        {"file_name": "000002.jpg", "category_id": 2, "bbox": [49, 49, 51, 51], "score": 0.5},   # TP
    ]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets))
    return root, det_file


def test_cli_scores_toy_set(tmp_path, toy):
    root, det_file = toy
    out, png = tmp_path / "res" / "results.json", tmp_path / "pr.png"
    r = run_eval("--voc-root", root, "--split", "test", "--detections", det_file, "--out", out, "--pr-curves", png)
    assert r.returncode == 0, r.stderr
    # cat: TP, (difficult: ignored), FP -> AP 1.  dog: TP, FP, TP with npos 2 -> precision
    # [1, .5, 2/3] at recall [.5, .5, 1]: VOC07 = (6 * 1 + 5 * 2/3) / 11 = 28/33; area = 5/6.
    voc07, voc12 = (1 + 28 / 33) / 2, (1 + 5 / 6) / 2
    assert f"voc07 mAP {voc07:.4f}" in r.stdout and f"voc12 mAP {voc12:.4f}" in r.stdout
    assert "dog" in r.stdout and "Average Precision" in r.stdout
    res = json.loads(out.read_text())
    assert res["voc07"]["mAP"] == pytest.approx(voc07) and res["voc12"]["mAP"] == pytest.approx(voc12)
    assert res["voc07"]["per_class"]["cat"] == {"ap": pytest.approx(1.0), "npos": 1, "num_detections": 3}
    # COCO, IoU .5: cat precision 1 up to recall 1 (the difficult one is crowd); dog 101-point
    # interpolation: recall 0..0.5 (51 points) at 1, the 50 points above at 2/3.
    coco_dog = (51 + 50 * 2 / 3) / 101
    assert res["coco"]["AP50"] == pytest.approx((1 + coco_dog) / 2)
    assert res["num_detections"] == 6 and res["num_images"] == 3
    assert png.stat().st_size > 1000


def test_cli_single_metric_and_iou(toy):
    root, det_file = toy
    r = run_eval("--voc-root", root, "--detections", det_file, "--metric", "voc12", "--iou", "0.2")
    assert r.returncode == 0, r.stderr
    # at IoU > 0.2 the shifted dog (IoU 0.26) is a duplicate of the gt matched later -> order
    # TP(.95), TP(.6), FP(.5): dog AP 1, mAP 1
    assert "voc12 mAP 1.0000" in r.stdout and "voc07" not in r.stdout and "COCO" not in r.stdout


def test_help_documents_the_format():
    r = run_eval("--help")
    assert r.returncode == 0
    for word in ("category_id", "bbox", "[x, y, width, height]", "score", "file_name", "image_id"):
        assert word in r.stdout


def test_errors_exit_2_with_one_line(tmp_path, toy):
    root, det_file = toy
    r = run_eval("--voc-root", root, "--detections", tmp_path / "nope.json")
    assert r.returncode == 2 and "nope.json" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 0, "category_id": 9, "bbox": [0, 0, 1, 1], "score": 1}]')
    r = run_eval("--voc-root", root, "--detections", bad)
    assert r.returncode == 2 and "bad.json: entry 0: unknown category_id 9" in r.stderr
    r = run_eval("--voc-root", tmp_path / "no_root", "--detections", det_file)
    assert r.returncode == 2 and "no_root" in r.stderr and "Traceback" not in r.stderr
    r = run_eval("--detections", det_file)  # no data set given: argparse usage error
    assert r.returncode == 2 and "--voc-root" in r.stderr


def test_bccd_ground_truth_as_detections_is_perfect(tmp_path, bccd_root):
    from detkit.data.voc import load_voc
    from detkit.evaluation.detections import save_detections

    data = load_voc(bccd_root, "test")
    dets = {r.image_id: {"boxes": r.boxes, "scores": np.ones(len(r.boxes), np.float32), "labels": r.labels}
            for r in data.records}
    save_detections(tmp_path / "gt.json", dets, data)
    out = tmp_path / "r.json"
    r = run_eval("--voc-root", bccd_root, "--split", "test", "--detections", tmp_path / "gt.json", "--out", out,
                 "--quiet-coco")
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["voc07"]["mAP"] == pytest.approx(1.0) and res["voc12"]["mAP"] == pytest.approx(1.0)
    assert res["coco"]["AP50"] == pytest.approx(1.0)
    assert res["num_detections"] == sum(len(r.boxes) for r in data.records) > 0
