"""The YOLO layout reader: boxes in pixels, names, splits, negatives, and the fault policy."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from detkit.data.problems import DataError, DataWarning
from detkit.data.yolo import label_path, load_yolo


def _image(path, w=100, h=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 90, 90)).save(path)


def _labels(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def yolo_root(tmp_path):
    root = tmp_path / "set"
    _image(root / "images/train/a.jpg")
    _labels(root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n1 0.1 0.2 0.2 0.2\n")
    _image(root / "images/train/sub/b.png", 80, 60)
    _labels(root / "labels/train/sub/b.txt", "1 0.5 0.5 1.0 1.0\n")
    _image(root / "images/train/negative.jpg")  # no label file: a negative image
    _image(root / "images/val/c.jpg")
    _labels(root / "labels/val/c.txt", "0 0.25 0.25 0.5 0.5\n")
    (root / "data.yaml").write_text("path: /nowhere/on/this/machine\ntrain: images/train\nval: images/val\n"
                                    "names: {0: cat, 1: dog}\n")
    return root


def test_boxes_become_pixels_and_names_come_from_data_yaml(yolo_root):
    data = load_yolo(yolo_root, "train")
    assert data.class_names == ["cat", "dog"] and [r.name for r in data.records] == ["a", "negative", "sub/b"]
    a, neg, b = data.records
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 5, 20, 15]])  # (cx - w/2) * W, ...
    assert a.labels.tolist() == [0, 1] and (a.width, a.height) == (100, 50)
    assert len(neg.boxes) == 0 and b.boxes.tolist() == [[0, 0, 80, 60]]
    assert len(load_yolo(yolo_root, "train", keep_empty=False)) == 2
    assert load_yolo(yolo_root, "val").records[0].boxes.tolist() == [[0, 0, 50, 25]]


def test_a_subset_of_classes(yolo_root):
    with pytest.warns(DataWarning, match="dropped 1 object of classes not in the class list"):
        data = load_yolo(yolo_root, "train", class_names=["dog"])
    assert data.class_names == ["dog"] and [r.labels.tolist() for r in data.records] == [[0], [], [0]]


def test_faults_lenient_and_strict(yolo_root):
    _labels(yolo_root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n7 0.5 0.5 0.1 0.1\nhello\n0 0.5 0.5 0 0.3\n"
                                               "1 0.95 0.5 0.2 0.2\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_yolo(yolo_root, "train")
    text = str(caught[0].message)
    assert "dropped 1 object of classes not in the class list" in text and "dropped 1 label line" in text
    assert "dropped 1 zero-size box" in text and "clipped 1 box" in text
    np.testing.assert_allclose(data.records[0].boxes, [[40, 15, 60, 35], [85, 20, 100, 30]])
    with pytest.raises(DataError, match=r"a\.txt: line 2: class 7 is not in names \(0\.\.1\)"):
        load_yolo(yolo_root, "train", strict=True)


def test_missing_pieces_are_named(tmp_path, yolo_root):
    with pytest.raises(DataError, match="data.yaml: no data.yaml"):
        load_yolo(tmp_path, "train")
    with pytest.raises(DataError, match=r"split 'test': image folder .* not found \(images/ has: train, val\)"):
        load_yolo(yolo_root, "test")
    (yolo_root / "data.yaml").write_text("names: [a, a]\n")
    with pytest.raises(DataError, match="names has duplicates"):
        load_yolo(yolo_root, "train")


def test_label_path_follows_ultralytics():
    from pathlib import Path
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/images/d/images/val/y.png")) == Path("/images/d/labels/val/y.txt")


def test_the_data_config_trains_through_load_split(yolo_root):
    from detkit.engine.config import compose_run_config
    from detkit.engine.setup import load_split
    conf = compose_run_config(["data=yolo", f"data.root={yolo_root}"])
    train = load_split(conf["data"], "train")
    test = load_split(conf["data"], "test", train.class_names)
    assert len(train) == 3 and len(test) == 1 and test.class_names == ["cat", "dog"]
