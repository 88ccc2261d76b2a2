"""The detections file: round trip, file-name matching, and one clear error per malformation."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from detkit.data.record import DetectionData, Record
from detkit.evaluation.detections import DetectionsFileError, load_detections, save_detections


@pytest.fixture
def data():
    recs = [Record(image_id=5, file_name="/data/JPEGImages/000005.jpg", width=50, height=40, name="000005"),
            Record(image_id=9, file_name="/data/JPEGImages/000009.jpg", width=50, height=40, name="000009"),
            Record(image_id=11, file_name="/data/JPEGImages/000011.jpg", width=50, height=40, name="000011")]
    return DetectionData(recs, ["cat", "dog"], category_ids=[17, 18], name="toy")


def test_round_trip_is_exact(tmp_path, data):
    dets = {5: {"boxes": np.array([[1.5, 2.25, 10.1, 20.7], [0, 0, 3, 3]], np.float32),
                "scores": np.array([0.9, 0.1], np.float32), "labels": np.array([1, 0])},
            9: {"boxes": np.array([[7.3, 1.1, 9.9, 4.4]], np.float32),
                "scores": np.array([0.5], np.float32), "labels": np.array([0])}}
    path = save_detections(tmp_path / "sub" / "dets.json", dets, data)
    assert os.listdir(path.parent) == ["dets.json"]  # no temp file left behind
    entries = json.loads(path.read_text())
    assert entries[1] == {"image_id": 5, "category_id": 17, "bbox": [0.0, 0.0, 3.0, 3.0], "score": pytest.approx(0.1),
                          "file_name": "000005.jpg"}
    back = load_detections(path, data)
    assert set(back) == {5, 9, 11} and len(back[11]["scores"]) == 0
    for k in dets:
        np.testing.assert_array_equal(back[k]["boxes"], dets[k]["boxes"])
        np.testing.assert_array_equal(back[k]["scores"], dets[k]["scores"])
        np.testing.assert_array_equal(back[k]["labels"], dets[k]["labels"])
    assert back[5]["boxes"].dtype == np.float32 and back[5]["labels"].dtype == np.int64


def test_file_name_matching_wins_over_image_id(tmp_path, data):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([
        {"file_name": "000009.jpg", "image_id": 0, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5},
        {"file_name": "some/folder/000011.jpg", "category_id": 17, "bbox": [0, 0, 1, 1], "score": 0.2},
        {"file_name": "000005", "category_id": 17, "bbox": [0, 0, 1, 1], "score": 0.3},
        {"image_id": 5, "category_id": 18, "bbox": [0, 0, 2, 2], "score": 0.4},
    ]))
    d = load_detections(p, data)
    np.testing.assert_array_equal(d[9]["boxes"], [[1, 2, 4, 6]])
    assert d[9]["labels"].tolist() == [1] and d[11]["labels"].tolist() == [0]
    assert d[5]["scores"].tolist() == pytest.approx([0.3, 0.4])  # file order kept


GOOD = {"image_id": 5, "category_id": 17, "bbox": [1, 2, 3, 4], "score": 0.5}


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"image_id": 5}), "expected a JSON list"),
    (json.dumps([GOOD, 3]), "entry 1: expected an object"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "score"}]), "entry 0: missing key(s) score"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "image_id"}]), "missing key(s) image_id"),
    (json.dumps([GOOD, {**GOOD, "image_id": 6}]), "entry 1: unknown image_id 6"),
    (json.dumps([{**GOOD, "image_id": "5"}]), "image_id must be an integer"),
    (json.dumps([{**GOOD, "category_id": 1}]), "entry 0: unknown category_id 1"),
    (json.dumps([{**GOOD, "file_name": "nope.jpg"}]), "file_name 'nope.jpg' is not an image"),
    (json.dumps([{**GOOD, "bbox": [1, 2, -3, 4]}]), "negative width or height"),
    (json.dumps([{**GOOD, "bbox": [1, 2, 3]}]), "bbox must be a list of 4 numbers"),
    (json.dumps([{**GOOD, "bbox": [1, "2", 3, 4]}]), "bbox must be a list of 4 numbers"),
    (json.dumps([{**GOOD, "bbox": [1, float("inf"), 3, 4]}]), "non-finite"),
    (json.dumps([{**GOOD, "score": float("nan")}]), "score must be a finite number"),
    (json.dumps([{**GOOD, "score": None}]), "score must be a finite number"),
])
def test_malformed_files_name_the_file_and_entry(tmp_path, data, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(DetectionsFileError) as err:
        load_detections(p, data)
    assert str(p) in str(err.value)
    assert message in str(err.value)


def test_binary_and_missing_files(tmp_path, data):
    p = tmp_path / "bin.json"
    p.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DetectionsFileError, match="bin.json"):
        load_detections(p, data)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_detections(tmp_path / "missing.json", data)


def test_ambiguous_file_name_needs_image_id(tmp_path):
    recs = [Record(image_id=1, file_name="/a/JPEGImages/x.jpg", width=9, height=9, name="x"),
            Record(image_id=2, file_name="/b/JPEGImages/x.jpg", width=9, height=9, name="x")]
    data = DetectionData(recs, ["c"])
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"file_name": "x.jpg", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    with pytest.raises(DetectionsFileError, match="fits 2 images"):
        load_detections(p, data)
    p.write_text(json.dumps([{"file_name": "x.jpg", "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]))
    assert len(load_detections(p, data)[2]["scores"]) == 1


def test_save_rejects_bad_detections_and_writes_nothing(tmp_path, data):
    p = tmp_path / "d.json"
    with pytest.raises(ValueError, match="image_id 4"):
        save_detections(p, {4: {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0)}}, data)
    with pytest.raises(ValueError, match="non-finite"):
        save_detections(p, {5: {"boxes": np.zeros((1, 4)), "scores": np.array([np.nan]), "labels": np.zeros(1)}}, data)
    assert not p.exists() and os.listdir(tmp_path) == []
