"""load_voc on generated VOC trees (every fault, strict and lenient) and on the real bccd/raccoon."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from tests.data._fixtures import make_voc
from detkit.data.images import image_size, read_image
from detkit.data.problems import DataError, DataWarning
from detkit.data.voc import available_splits, load_voc

GOOD = {"objects": [("cat", (1, 1, 10, 10))]}


def _load_quiet(*args, **kw):
    """load_voc that fails the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load_voc(*args, **kw)


def _load_warned(*args, **kw):
    """load_voc in lenient mode; returns (data, the one DataWarning's message)."""
    with pytest.warns(DataWarning) as record:
        data = load_voc(*args, **kw)
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 1, messages
    return data, messages[0]


def test_coordinate_convention_and_flags(tmp_path):
    spec = {
        "a": {"objects": [
            {"name": "dog", "box": (1, 2, 10, 5), "difficult": 1, "truncated": 0},
            {"name": "cat", "box": (11, 12, 64, 48)},  # no flags: both False; touches the border
        ]},
    }
    root = make_voc(tmp_path, spec, {"train": ["a"]})
    data = _load_quiet(root, "train")
    r = data.records[0]
    assert data.class_names == ["cat", "dog"] and data.category_ids == [1, 2]
    # VOC pixels 1..10 (inclusive, 1-based) are 0-based pixels 0..9: continuous [0, 10], width 10.
    np.testing.assert_array_equal(r.boxes, [[0, 1, 10, 5], [10, 11, 64, 48]])
    assert r.labels.tolist() == [1, 0]
    assert r.difficult.tolist() == [True, False] and r.truncated.tolist() == [False, False]
    assert r.iscrowd.tolist() == [False, False]
    assert (r.width, r.height, r.name, r.image_id) == (64, 48, "a", 0)
    assert r.file_name.endswith("JPEGImages/a.jpg")


def test_given_class_list_sets_label_order(tmp_path):
    spec = {"a": {"objects": [("cat", (1, 1, 5, 5)), ("dog", (2, 2, 6, 6))]}}
    root = make_voc(tmp_path, spec, {"train": ["a"]})
    data = _load_quiet(root, "train", ["dog", "cat", "bird"])
    assert data.class_names == ["dog", "cat", "bird"]
    assert data.records[0].labels.tolist() == [1, 0]


def test_folder_and_absolute_path_ignored_and_filename_fallback(tmp_path):
    spec = {
        "a": {"extra": "<folder>images</folder><path>/Users/someone/raccoon/a.jpg</path>", **GOOD},
        "b": {"filename": "", **GOOD},  # no <filename>: JPEGImages/<id>.jpg
        "c": {"filename": "c.png", "image": "png", **GOOD},
    }
    root = make_voc(tmp_path, spec, {"train": ["a", "b", "c"]})
    data = _load_quiet(root, "train")
    assert [r.file_name.split("/")[-1] for r in data.records] == ["a.jpg", "b.jpg", "c.png"]


def test_missing_or_zero_size_read_from_header(tmp_path):
    spec = {
        "a": {"size": None, "image_size": (30, 20), **GOOD},
        "b": {"size": (0, 0), "image_size": (31, 21), **GOOD},
    }
    data = _load_quiet(make_voc(tmp_path, spec, {"train": ["a", "b"]}), "train")
    assert [(r.width, r.height) for r in data.records] == [(30, 20), (31, 21)]


# Each fault: the spec of one faulty image (beside a good one), the summary phrase in lenient
# mode, the file the strict error must name, and what lenient loading keeps.
FAULTS = {
    "zero_size": ({"objects": [("cat", (5, 5, 5, 9)), ("cat", (1, 1, 4, 4))]}, "dropped 1 zero-size box", "bad.xml", 1),
    "negative_size": ({"objects": [("cat", (10, 5, 4, 9)), ("cat", (1, 1, 4, 4))]}, "dropped 1 zero-size box", "bad.xml", 1),
    "wholly_outside": ({"objects": [("cat", (70, 10, 90, 20)), ("cat", (1, 1, 4, 4))]}, "dropped 1 box wholly outside", "bad.xml", 1),
    "nan": ({"objects": [("cat", ("nan", 1, 5, 5)), ("cat", (1, 1, 4, 4))]}, "dropped 1 box with missing, NaN", "bad.xml", 1),
    "non_numeric": ({"objects": [("cat", ("abc", 1, 5, 5)), ("cat", (1, 1, 4, 4))]}, "dropped 1 box with missing, NaN", "bad.xml", 1),
    "missing_coordinate": ({"objects": [("cat", (1, 1, None, 5)), ("cat", (1, 1, 4, 4))]}, "dropped 1 box with missing, NaN", "bad.xml", 1),
    "no_bndbox": ({"objects": [{"name": "cat", "box": None}, ("cat", (1, 1, 4, 4))]}, "dropped 1 object without a name or a box", "bad.xml", 1),
    "malformed_xml": ({"xml": "<annotation><object>"}, "skipped 1 image with malformed annotations", "bad.xml", None),
    "wrong_root_tag": ({"xml": "<html></html>"}, "skipped 1 image with malformed annotations", "bad.xml", None),
    "missing_annotation": ({"xml": None}, "skipped 1 image without an annotation file", "bad.xml", None),
    "missing_image": ({"image": None, **GOOD}, "skipped 1 image whose file is missing", "bad.jpg", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_lenient_repairs_and_warns_once(tmp_path, fault):
    entry, phrase, _, kept_boxes = FAULTS[fault]
    root = make_voc(tmp_path, {"good": GOOD, "bad": entry}, {"train": ["good", "bad"]})
    data, message = _load_warned(root, "train")
    assert message.startswith(f"voc:{root.name}/train: {phrase}")
    assert "(bad." in message  # the example names the file
    assert data.records[0].name == "good"
    if kept_boxes is None:  # the image is skipped
        assert [r.name for r in data.records] == ["good"]
    else:
        assert [r.name for r in data.records] == ["good", "bad"]
        np.testing.assert_array_equal(data.records[1].boxes, [[0, 0, 4, 4]])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_strict_raises_naming_file(tmp_path, fault):
    entry, _, file_part, _ = FAULTS[fault]
    root = make_voc(tmp_path, {"good": GOOD, "bad": entry}, {"train": ["good", "bad"]})
    with pytest.raises(DataError, match=re.escape(file_part)) as info:
        load_voc(root, "train", strict=True)
    assert "bad.xml" in str(info.value)  # the annotation file (its message names the image if missing)


def test_partly_outside_box_clipped(tmp_path):
    spec = {"a": {"objects": [("cat", (50, 0, 80, 20)), ("cat", (1, 1, 64, 48))]}}
    root = make_voc(tmp_path, spec, {"train": ["a"]})
    data, message = _load_warned(root, "train")
    assert "clipped 1 box to the image (a.xml)" in message
    # (49, -1, 80, 20) clipped to the 64x48 image; the second box lies exactly on the border.
    np.testing.assert_array_equal(data.records[0].boxes, [[49, 0, 64, 20], [0, 0, 64, 48]])
    with pytest.raises(DataError, match=r"a\.xml: object 0 .*partly outside the 64x48 image"):
        load_voc(root, "train", strict=True)


def test_unknown_class_dropped_only_with_class_list(tmp_path):
    spec = {"a": {"objects": [("cat", (1, 1, 5, 5)), ("zebra", (2, 2, 6, 6))]}}
    root = make_voc(tmp_path, spec, {"train": ["a"]})
    data, message = _load_warned(root, "train", ["cat"])
    assert "dropped 1 object of classes not in the class list (a.xml)" in message
    assert data.records[0].labels.tolist() == [0]
    with pytest.raises(DataError, match=r"a\.xml: object 1 has class 'zebra'"):
        load_voc(root, "train", ["cat"], strict=True)
    assert _load_quiet(root, "train").class_names == ["cat", "zebra"]


def test_empty_images_kept_by_default_and_filterable(tmp_path):
    root = make_voc(tmp_path, {"a": GOOD, "empty": {"objects": []}}, {"train": ["a", "empty"]})
    data = _load_quiet(root, "train", strict=True)  # an empty image is valid, even when strict
    assert [r.name for r in data.records] == ["a", "empty"]
    assert data.records[1].boxes.shape == (0, 4) and data.records[1].labels.dtype == np.int64
    kept = _load_quiet(root, "train", keep_empty=False)
    assert [(r.name, r.image_id) for r in kept.records] == [("a", 0)]


def test_duplicate_ids_keep_first(tmp_path):
    root = make_voc(tmp_path, {"a": GOOD, "b": GOOD}, {"train": ["a", "b", "a"]})
    data, message = _load_warned(root, "train")
    assert [(r.name, r.image_id) for r in data.records] == [("a", 0), ("b", 1)]
    assert "kept the first of 1 duplicate image id (train.txt)" in message
    with pytest.raises(DataError, match=r"train\.txt: image id 'a' listed more than once"):
        load_voc(root, "train", strict=True)


def test_check_images_finds_corrupt_files_and_wrong_sizes(tmp_path, capsys):
    spec = {"a": GOOD, "cut": {"image": "truncated", **GOOD}, "fake": {"image": "text", **GOOD},
            "wrong": {"size": (100, 100), "image_size": (64, 48), **GOOD}}
    root = make_voc(tmp_path, spec, {"train": list(spec)})
    # Without decoding, the truncated JPEG (intact header) and the wrong <size> go unnoticed.
    plain = _load_quiet(root, "train")
    assert [(r.name, r.width) for r in plain.records] == [("a", 64), ("cut", 64), ("fake", 64), ("wrong", 100)]
    data, message = _load_warned(root, "train", check_images=True)
    assert "skipped 2 images that could not be decoded (cut.xml, fake.xml)" in message
    assert "used the decoded size of 1 image whose annotated size was wrong (wrong.xml)" in message
    assert [(r.name, r.width, r.height) for r in data.records] == [("a", 64, 48), ("wrong", 64, 48)]
    assert "checking voc:" in capsys.readouterr().err  # the tqdm bar
    with pytest.raises(DataError, match=r"cut\.xml: image unreadable: .*cut\.jpg"):
        load_voc(root, "train", strict=True, check_images=True)


def test_one_warning_counts_every_fault(tmp_path):
    spec = {
        "a": {"objects": [("cat", (3, 3, 3, 3)), ("cat", (0, 1, 5, 5))]},
        "b": {"objects": [("cat", (7, 2, 7, 9)), ("cat", (60, 40, 70, 50))]},
        "c": {"image": None, **GOOD},
    }
    root = make_voc(tmp_path, spec, {"train": ["a", "b", "c"]})
    data, message = _load_warned(root, "train")
    assert message == (
        f"voc:{root.name}/train: dropped 2 zero-size boxes (a.xml, b.xml); clipped 2 boxes to the image "
        "(a.xml, b.xml); skipped 1 image whose file is missing (c.xml)"
    )
    assert sum(r.num_objects for r in data.records) == 2


def test_several_roots_times_several_splits(tmp_path):
    r07 = make_voc(tmp_path / "VOC2007", {"a": GOOD, "b": GOOD, "t": GOOD}, {"train": ["a"], "val": ["b"], "test": ["t"]})
    r12 = make_voc(tmp_path / "VOC2012", {"a": GOOD, "c": GOOD}, {"train": ["a"], "val": ["c"]})
    data = _load_quiet([r07, r12], ["train", "val"])
    # Each root with each split, in order; the same id in two roots is two images.
    assert [(r.name, r.image_id) for r in data.records] == [("a", 0), ("b", 1), ("a", 2), ("c", 3)]
    assert data.records[0].file_name != data.records[2].file_name
    assert data.name == "voc:VOC2007/train+val+VOC2012/train+val"
    with pytest.raises(DataError, match=r"split 'test' not found; available splits: train, val"):
        load_voc([r07, r12], "test")  # VOC2012 has no test split


def test_missing_root_and_split_name_the_path(tmp_path):
    root = make_voc(tmp_path / "voc", {"a": GOOD}, {"train": ["a"], "val": ["a"]})
    (root / "ImageSets" / "Main" / "cat_train.txt").write_text("a 1\n")
    assert available_splits(root) == ["train", "val"]
    with pytest.raises(DataError, match=r"Main/trainval\.txt: split 'trainval' not found; available splits: train, val"):
        load_voc(root)
    with pytest.raises(DataError, match=r"nowhere: VOC root folder not found"):
        load_voc(tmp_path / "nowhere", "train")


# --- the real data sets ---------------------------------------------------------------------

def _split_ids(root, split):
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def _xml(root, image_id):
    return (root / "Annotations" / f"{image_id}.xml").read_text()


def test_bccd_whole_set(bccd_root):
    ids = _split_ids(bccd_root, "trainval") + _split_ids(bccd_root, "test")
    assert len(set(ids)) == len(ids) == len(list((bccd_root / "Annotations").glob("*.xml")))  # 364
    n_objects = sum(len(re.findall(r"<object>", _xml(bccd_root, i))) for i in ids)
    names = sorted({n.strip() for i in ids for n in re.findall(r"<name>(.*?)</name>", _xml(bccd_root, i))})
    data, message = _load_warned(bccd_root, ["trainval", "test"])
    assert len(data) == len(ids) == 364
    assert data.class_names == names == ["Platelets", "RBC", "WBC"]
    assert sum(r.num_objects for r in data.records) == n_objects - 2 == 4888 - 2
    assert "dropped 2 zero-size boxes (BloodImage_00338.xml, BloodImage_00343.xml)" in message
    assert [r.image_id for r in data.records] == list(range(364))
    for r in data.records:
        assert (r.width, r.height) == (640, 480)
        w, h = r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]
        assert (w > 0).all() and (h > 0).all() and (r.boxes >= 0).all()
        assert (r.boxes[:, 2] <= r.width).all() and (r.boxes[:, 3] <= r.height).all()
    for split in ("train", "val", "test"):  # 205 / 87 / 72
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # 00338 is in val, 00343 in train
            assert len(load_voc(bccd_root, split)) == len(_split_ids(bccd_root, split))
    with pytest.raises(DataError, match=r"BloodImage_003(38|43)\.xml: object \d+ 'RBC'.*zero or negative size"):
        load_voc(bccd_root, ["trainval", "test"], strict=True)


def test_raccoon_all_images_greyscale_read_as_rgb(raccoon_root):
    ids = _split_ids(raccoon_root, "trainval") + _split_ids(raccoon_root, "test")
    data = _load_quiet(raccoon_root, ["trainval", "test"])
    assert len(data) == len(ids) == 200
    assert all(image_size(r.file_name) == (r.width, r.height) for r in data.records)  # <size> is right
    assert data.class_names == ["raccoon"]
    assert sum(r.num_objects for r in data.records) == sum(_xml(raccoon_root, i).count("<object>") for i in ids)
    grey = [r for r in data.records if "<depth>1</depth>" in _xml(raccoon_root, r.name)]
    assert grey  # the set's greyscale JPEGs
    for r in grey:
        img = read_image(r.file_name)
        assert img.shape == (r.height, r.width, 3)
        assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
