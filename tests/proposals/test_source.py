"""data.proposals nodes: validation, file and selective search sources, and the trainer's use of them."""
from __future__ import annotations

import numpy as np
import pytest

from detkit.data.images import read_image
from detkit.data.record import DetectionData
from detkit.data.synthetic import make_synthetic_voc
from detkit.data.voc import load_voc
from detkit.engine.setup import split_proposals
from detkit.proposals.cache import ProposalsError, write_proposals_file
from detkit.proposals.selective_search import selective_search
from detkit.proposals.source import check_proposals_spec, load_configured_proposals, prepare_proposals


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_images=2, image_size=(48, 64),
                              object_size=(16, 24), splits={"test": 1.0})
    return load_voc(root, "test", name="tiny/test")


@pytest.mark.parametrize("spec, match", [
    (None, "not set"),
    ({"source": None, "file": None}, "neither"),
    ({"source": "rpn"}, "must be 'selective_search'"),
    ({"source": "selective_search", "colour": 1}, r"unknown keys \['colour'\]"),
    ({"source": "selective_search", "base_k": 0}, r"data.proposals: .*base_k >= 1"),
    ({"source": "selective_search", "mode": "slow"}, r"data.proposals: .*mode must be one of"),
])
def test_bad_specs_say_what_to_do(spec, match):
    with pytest.raises(ValueError, match=match):
        check_proposals_spec(spec)


def test_defaults_and_file_wins():
    spec = check_proposals_spec({"source": "selective_search", "mode": "quality"})
    assert spec["mode"] == "quality" and spec["max_side"] == 500 and spec["min_size"] == 20
    assert (spec["base_k"], spec["inc_k"], spec["sigma"]) == (150, 150, 0.8)  # OpenCV's defaults
    assert check_proposals_spec({"source": "selective_search", "file": "a.npz", "max_proposals": 3}) == \
        {"file": "a.npz", "max_proposals": 3}


def test_file_source_whole_and_per_split(data, tmp_path):
    boxes = {r.image_id: np.array([[1, 2, 30, 40], [0, 0, 10, 10], [5, 5, 9, 9]], np.float32) + r.image_id
             for r in data.records}
    path = write_proposals_file(tmp_path / "b.npz", boxes, data)
    got = load_configured_proposals({"file": str(path), "max_proposals": 2}, data, split="test")
    assert set(got) == set(boxes)
    for i, b in got.items():
        np.testing.assert_array_equal(b, boxes[i][:2])
    per_split = load_configured_proposals({"file": {"test": str(path)}}, data, split="test")
    assert all(len(b) == 3 for b in per_split.values())
    with pytest.raises(ValueError, match="no file for split 'train'"):
        load_configured_proposals({"file": {"test": str(path)}}, data, split="train")
    with pytest.raises(ProposalsError, match="not found"):
        load_configured_proposals({"file": str(tmp_path / "none.npz")}, data, split="test")


def test_selective_search_source_computes_then_loads(data, tmp_path):
    spec = {"source": "selective_search", "mode": "single", "max_side": 500, "min_size": 4, "base_k": 60,
            "cache_dir": str(tmp_path / "cache"), "workers": 1, "file": None}
    with pytest.raises(ProposalsError, match="no proposals cache"):
        load_configured_proposals(spec, data, split="test")
    prepare_proposals(spec, data, progress=False)
    got = load_configured_proposals(spec, data, split="test")
    for r in data.records:  # the cached boxes are the search's own on the original image
        direct = selective_search(read_image(r.file_name), mode="single", max_side=500, min_size=4, base_k=60)
        np.testing.assert_array_equal(got[r.image_id], direct)
    # the same images under another split name: nothing to compute, the same boxes
    renamed = DetectionData(records=data.records, class_names=data.class_names, category_ids=data.category_ids,
                            name="tiny/val")
    assert load_configured_proposals(spec, renamed, split="val").keys() == got.keys()


def test_trainer_split_proposals_only_for_methods_that_need_them(data, tmp_path):
    path = write_proposals_file(tmp_path / "b.json", {r.image_id: [[0, 0, 8, 8]] for r in data.records}, data)
    conf = {"method": {"requires_proposals": False}, "data": {"proposals": {"file": str(path)}}}
    assert split_proposals(conf, data, "test") == {}
    conf["method"]["requires_proposals"] = True
    out = split_proposals(conf, data, "test")["proposals"]
    assert sorted(out) == sorted(r.image_id for r in data.records)
    assert split_proposals(conf, None, "val") == {}
