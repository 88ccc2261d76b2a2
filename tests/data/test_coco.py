"""load_coco: id mapping, xywh -> xyxy, crowd flags, and every fault in strict and lenient mode."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest

from tests.data._fixtures import write_image
from detkit.data.coco import load_coco
from detkit.data.problems import DataError, DataWarning

BASE = {
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 20, "file_name": "sub/b.jpg", "width": 64, "height": 48},
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.5, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
        {"id": 3, "image_id": 20, "category_id": 3, "bbox": [5, 6, 7, 8]},  # iscrowd missing: 0
    ],
    "categories": [{"id": 7, "name": "zebra"}, {"id": 1, "name": "ant"}, {"id": 3, "name": "cat"}],
}


def _write(tmp_path, dataset, images=("a.jpg", "sub/b.jpg")):
    for name in images:
        write_image(tmp_path / "img" / name)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(dataset))
    return path, tmp_path / "img"


def _quiet(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_coco(*args, **kw)


def _warned(*args, **kw):
    with pytest.warns(DataWarning) as record:
        data = load_coco(*args, **kw)
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 1, messages
    return data, messages[0]


def test_ids_boxes_and_crowd(tmp_path):
    path, root = _write(tmp_path, BASE)
    data = _quiet(path, root)
    # Labels follow increasing category id: 1 ant, 3 cat, 7 zebra.
    assert data.class_names == ["ant", "cat", "zebra"] and data.category_ids == [1, 3, 7]
    assert data.name == "coco:instances"
    a, b = data.records
    assert (a.image_id, a.name, a.width, a.height) == (10, "a.jpg", 64, 48)
    assert b.file_name == str(root / "sub" / "b.jpg")
    np.testing.assert_allclose(a.boxes, [[1.5, 2, 11.5, 22], [0, 0, 64, 48]])
    assert a.labels.tolist() == [2, 0] and a.iscrowd.tolist() == [False, True]
    np.testing.assert_allclose(b.boxes, [[5, 6, 12, 14]])
    assert b.labels.tolist() == [1] and b.iscrowd.tolist() == [False]
    assert a.difficult.tolist() == [False, False]
    for r in data.records:  # label -> category id -> the annotation's category
        assert [data.category_ids[l] for l in r.labels] == [
            x["category_id"] for x in BASE["annotations"] if x["image_id"] == r.image_id
        ]


def test_class_names_select_and_order(tmp_path):
    path, root = _write(tmp_path, BASE)
    data = _quiet(path, root, class_names=["zebra", "ant"], strict=True)  # leaving out "cat" is no fault
    assert data.class_names == ["zebra", "ant"] and data.category_ids == [7, 1]
    assert data.records[0].labels.tolist() == [0, 1]
    assert data.records[1].num_objects == 0
    with pytest.raises(DataError, match=r"instances\.json: class_names \['dog'\] are not categories"):
        load_coco(path, root, class_names=["dog"])
    assert [r.image_id for r in _quiet(path, root, class_names=["cat"], keep_empty=False).records] == [20]


@pytest.mark.parametrize(
    "text, pattern",
    [
        ('{"images": [', r"malformed JSON at line 1"),
        ("[1, 2]", r"top level is a list"),
        ('{"images": [], "categories": {}}', r"missing or non-list key 'categories'"),
        ('{"images": [{"file_name": "a.jpg"}], "categories": []}', r"images\[0\] lacks key\(s\) 'id'"),
        ('{"images": [], "categories": [], "annotations": [{"image_id": 1, "category_id": 1}]}',
         r"annotations\[0\] lacks key\(s\) 'bbox'"),
        ('{"images": [{"id": "x", "file_name": "a"}], "categories": []}', r"images\[0\]\['id'\] is 'x', not an integer"),
        ('{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', r"duplicate category ids"),
    ],
)
def test_broken_file_is_an_error_in_both_modes(tmp_path, text, pattern):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for strict in (False, True):
        with pytest.raises(DataError, match=r"bad\.json: " + pattern):
            load_coco(path, tmp_path, strict=strict)
    with pytest.raises(DataError, match="missing.json: COCO annotation file not found"):
        load_coco(tmp_path / "missing.json", tmp_path)


def _with(**changes):
    d = copy.deepcopy(BASE)
    for key, fn in changes.items():
        fn(d[key])
    return d


# fault -> (dataset, summary phrase, strict message pattern, boxes left on image 10)
FAULTS = {
    "unknown_category": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 99, "bbox": [1, 1, 5, 5]})),
                         "dropped 1 annotation with unknown category ids (category id 99)", r"category id 99 is not in", 2),
    "unknown_image": (_with(annotations=lambda a: a.append({"image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5]})),
                      "dropped 1 annotation of unknown image ids (image id 77)", r"annotations\[3\] \(image id 77\): no image", 2),
    "duplicate_image": (_with(images=lambda i: i.append({"id": 10, "file_name": "a2.jpg", "width": 9, "height": 9})),
                        "kept the first of 1 duplicate image id (a2.jpg)", r"image id 10 appears twice", 2),
    "zero_size": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": [1, 1, 0, 5]})),
                  "dropped 1 zero-size box (a.jpg)", r"annotations\[3\] \(image a\.jpg\): zero or negative size", 2),
    "outside": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": [64, 1, 5, 5]})),
                "dropped 1 box wholly outside the image (a.jpg)", r"wholly outside the 64x48 image", 2),
    "nan": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": [float("nan"), 1, 5, 5]})),
            "dropped 1 box with missing, NaN or non-numeric coordinates (a.jpg)", r"not 4 finite numbers", 2),
    "non_numeric": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": "1234"})),
                    "dropped 1 box with missing, NaN", r"'1234' are not 4 finite numbers", 2),
    "short_bbox": (_with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": [1, 2, 3]})),
                   "dropped 1 box with missing, NaN", r"not 4 finite numbers", 2),
    "missing_image": (_with(images=lambda i: i.append({"id": 30, "file_name": "gone.jpg", "width": 9, "height": 9})),
                      "skipped 1 image whose file is missing (gone.jpg)", r"image file .*gone\.jpg not found", 2),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_lenient_and_strict(tmp_path, fault):
    dataset, phrase, pattern, boxes_on_a = FAULTS[fault]
    path, root = _write(tmp_path, dataset)
    data, message = _warned(path, root)
    assert message.startswith(f"coco:instances: {phrase}")
    assert [r.image_id for r in data.records] == [10, 20]
    assert data.records[0].num_objects == boxes_on_a and data.records[0].width == 64
    with pytest.raises(DataError, match=r"instances\.json: .*" + pattern):
        load_coco(path, root, strict=True)


def test_partly_outside_clipped(tmp_path):
    dataset = _with(annotations=lambda a: a.append({"image_id": 10, "category_id": 1, "bbox": [-2, 40, 10, 20]}))
    path, root = _write(tmp_path, dataset)
    data, message = _warned(path, root)
    assert message == "coco:instances: clipped 1 box to the image (a.jpg)"
    np.testing.assert_allclose(data.records[0].boxes[-1], [0, 40, 8, 48])
    with pytest.raises(DataError, match=r"partly outside"):
        load_coco(path, root, strict=True)


def test_size_from_header_and_check_images(tmp_path):
    dataset = _with(images=lambda i: (i[0].pop("width"), i[1].update(width=100)))
    path, root = _write(tmp_path, dataset)
    data = _quiet(path, root)
    assert (data.records[0].width, data.records[0].height) == (64, 48)  # read from the header
    assert data.records[1].width == 100  # believed without check_images
    data, message = _warned(path, root, check_images=True)
    assert message == "coco:instances: used the decoded size of 1 image whose annotated size was wrong (sub/b.jpg)"
    assert data.records[1].width == 64
    write_image(root / "a.jpg", "truncated")
    data, message = _warned(path, root, check_images=True)
    assert "skipped 1 image that could not be decoded (a.jpg)" in message
    assert [r.image_id for r in data.records] == [20]
    with pytest.raises(DataError, match=r"instances\.json: image unreadable: .*a\.jpg"):
        load_coco(path, root, check_images=True, strict=True)


def test_annotations_without_ids_or_with_repeated_ids_all_kept(tmp_path):
    dataset = _with(annotations=lambda a: [x.update(id=5) for x in a] + [a[0].pop("id")])
    path, root = _write(tmp_path, dataset)
    data = _quiet(path, root)
    assert sum(r.num_objects for r in data.records) == len(BASE["annotations"])
