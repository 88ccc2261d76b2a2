"""VOC -> COCO ground truth: fields, the difficult -> crowd rule under COCOeval, the CLI, round trip."""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.data._fixtures import make_voc
from detkit.data.coco import load_coco
from detkit.data.convert import to_coco_dict, write_coco_json
from detkit.data.voc import load_voc
from tests._tools import load_tool

SPEC = {
    "a": {"objects": [("dog", (1, 2, 10, 20)), {"name": "cat", "box": (21, 11, 40, 30), "difficult": 1}]},
    "b": {"objects": [("cat", (5, 5, 24, 44))]},
    "empty": {"objects": []},
}


@pytest.fixture
def voc(tmp_path):
    return load_voc(make_voc(tmp_path / "voc", SPEC, {"test": list(SPEC)}), "test")


def test_fields(voc):
    d = to_coco_dict(voc)
    assert d["categories"] == [{"id": 1, "name": "cat", "supercategory": "none"},
                               {"id": 2, "name": "dog", "supercategory": "none"}]
    assert d["images"] == [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 48},
                           {"id": 1, "file_name": "b.jpg", "width": 64, "height": 48},
                           {"id": 2, "file_name": "empty.jpg", "width": 64, "height": 48}]
    anns = d["annotations"]
    assert [a["id"] for a in anns] == [1, 2, 3]
    # VOC (1, 2, 10, 20) -> xyxy (0, 1, 10, 20) -> xywh (0, 1, 10, 19), area 190.
    assert anns[0] == {"id": 1, "image_id": 0, "category_id": 2, "bbox": [0.0, 1.0, 10.0, 19.0], "area": 190.0, "iscrowd": 0}
    assert anns[1]["bbox"] == [20.0, 10.0, 20.0, 20.0] and anns[1]["iscrowd"] == 1  # difficult
    assert anns[2]["image_id"] == 1 and anns[2]["category_id"] == 1
    assert [a["iscrowd"] for a in to_coco_dict(voc, difficult_as_crowd=False)["annotations"]] == [0, 0, 0]
    json.dumps(d)  # plain JSON types only


def _ap50(gt_dict, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(detections), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1]


def test_difficult_ignored_by_cocoeval_only_as_crowd(voc):
    d = to_coco_dict(voc)
    # Detect every non-difficult box exactly; miss the difficult cat on image a.
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in d["annotations"] if not a["iscrowd"]]
    assert len(dets) == 2
    assert _ap50(d, dets) == pytest.approx(1.0)  # the missed difficult box costs nothing
    # Counted as an ordinary box, the miss halves cat recall: AP(cat) ~ 0.5, AP(dog) = 1.
    plain = to_coco_dict(voc, difficult_as_crowd=False)
    assert _ap50(plain, dets) == pytest.approx((0.5 + 1.0) / 2, abs=0.01)


def test_round_trip_through_load_coco(voc, tmp_path):
    path = write_coco_json(voc, tmp_path / "out" / "gt.json", difficult_as_crowd=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = load_coco(path, tmp_path / "voc" / "JPEGImages")
    assert back.class_names == voc.class_names and back.category_ids == voc.category_ids
    assert len(back) == len(voc)
    for r, s in zip(voc.records, back.records):
        assert (r.image_id, r.width, r.height, r.file_name) == (s.image_id, s.width, s.height, s.file_name)
        np.testing.assert_allclose(r.boxes, s.boxes)
        assert r.labels.tolist() == s.labels.tolist()


def _voc2coco():
    module = load_tool("voc2coco")
    return module


def test_cli(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", SPEC, {"test": list(SPEC)})
    out = tmp_path / "gt.json"
    assert _voc2coco().main(["--root", str(root), "--split", "test", "--out", str(out)]) == 0
    assert "wrote 3 images, 3 boxes, 2 classes (cat, dog)" in capsys.readouterr().out
    assert json.loads(out.read_text()) == to_coco_dict(load_voc(root, "test"))
    assert _voc2coco().main(["--root", str(root), "--split", "nope", "--out", str(out)]) == 2
    assert "split 'nope' not found" in capsys.readouterr().err


def test_bccd_test_scores_perfectly_against_itself(bccd_root):
    data = load_voc(bccd_root, "test")
    d = to_coco_dict(data)
    assert len(d["annotations"]) == sum(r.num_objects for r in data.records)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in d["annotations"]]
    assert _ap50(d, dets) == pytest.approx(1.0)

