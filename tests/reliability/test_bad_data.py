"""Every data fault of issue 8 (tests/reliability/faults.py), strict and lenient, through load ->
dataset -> training iterations (in-process Trainer and the tools/train.py command).

The per-fault unit tests are in tests/data/test_voc.py, test_coco.py and test_images.py; here the
faults are all in one set, the way a messy real data set arrives.
"""
import re
import sys
import warnings

import numpy as np
import pytest
import torch

from detkit.data.coco import load_coco
from detkit.data.dataset import DetectionDataset
from detkit.data.problems import KINDS, DataError, DataWarning
from detkit.data.transforms import build_transforms
from detkit.data.voc import load_voc
from detkit.engine.trainer import Trainer

from ._cli import REPO, TINY, PY, run
from .faults import CLASSES, COCO_CASES, VOC_CASES, FaultSet, make_fault_set

sys.path.insert(0, str(REPO / "tests" / "engine"))
from tiny_detector import TinyDetector  # noqa: E402

# kind -> what the strict message must say after "<file>: "
STRICT_PHRASE = {
    "missing_image": r"image file .* not found",
    "corrupt_image": r"image unreadable: .*(truncated or corrupt image|not an image file)",
    "malformed_annotation": r"malformed XML",
    "missing_annotation": r"annotation file not found",
    "zero_size_box": r"zero or negative size",
    "outside_box": r"wholly outside the 96x64 image",
    "clipped_box": r"partly outside the 96x64 image",
    "bad_coordinates": r"not 4 finite numbers",
    "unknown_class": r"class 'dog', not in the class list",
    "unknown_category": r"category id 99 is not in 'categories'",
    "unknown_image": r"no image with that id",
    "duplicate_id": r"(appears twice|listed more than once)",
}


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> FaultSet:
    return make_fault_set(tmp_path_factory.mktemp("faults"))


def _load_warnings(fn, *a, **k):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*a, **k)
    return out, [w for w in caught if issubclass(w.category, DataWarning)]


def _phrase(kind: str, n: int) -> str:
    return KINDS[kind].format(n=n, s="" if n == 1 else "s", es="" if n == 1 else "es")


@pytest.mark.parametrize("case", [c for c, (a, b, _) in VOC_CASES.items() if b] + ["duplicate_id"])
def test_voc_strict_stops_naming_file_and_fault(faults, case):
    kind = VOC_CASES[case][1] if case in VOC_CASES else "duplicate_id"
    expected_file = "duplicate_id.txt" if case == "duplicate_id" else f"{case}.xml"
    with pytest.raises(DataError) as err:
        load_voc(faults.voc_root, case, CLASSES, strict=True, check_images=True)
    assert err.value.file.endswith(expected_file)
    assert re.match(rf".*{re.escape(expected_file)}: .*{STRICT_PHRASE[kind]}", str(err.value)), str(err.value)


def test_voc_strict_stops_at_the_first_fault_of_the_whole_set(faults):
    with pytest.raises(DataError, match=r"all\.txt: image id 'good' listed more than once"):
        load_voc(faults.voc_root, "all", CLASSES, strict=True)


@pytest.mark.parametrize("case", [c for c, (a, b, _) in VOC_CASES.items() if not b])
def test_voc_strict_accepts_repairable_formats(faults, case):
    data = load_voc(faults.voc_root, case, CLASSES, strict=True, check_images=True)
    assert [r.name for r in data.records] == [case]


@pytest.mark.parametrize("check_images", [False, True])
def test_voc_lenient_repairs_skips_and_warns_once(faults, check_images):
    data, caught = _load_warnings(load_voc, faults.voc_root, "all", CLASSES, check_images=check_images)
    assert len(caught) == 1, [str(w.message) for w in caught]
    text = str(caught[0].message)
    expected = FaultSet.expected_voc_counts(check_images)
    for kind, n in expected.items():
        assert _phrase(kind, n) in text, (kind, text)
    assert len(text.split("; ")) == len(expected)  # nothing else reported
    assert [r.name for r in data.records] == FaultSet.expected_voc_ids(check_images)
    by = {r.name: r for r in data.records}
    # the repairs themselves: clipped to the image, bad boxes/objects dropped, the valid one kept
    np.testing.assert_array_equal(by["clipped_box"].boxes, [[9, 9, 40, 40], [69, 29, 96, 64]])
    for case in ("zero_box", "negative_box", "outside_box", "nan_box", "unknown_class"):
        np.testing.assert_array_equal(by[case].boxes, [[9, 9, 40, 40]])
    assert (by["exif"].width, by["exif"].height) == (64, 96)


@pytest.mark.parametrize("case", list(COCO_CASES))
def test_coco_strict_stops_naming_file_and_fault(faults, case):
    with pytest.raises(DataError) as err:
        load_coco(faults.coco_json(case), faults.coco_images, strict=True)
    assert err.value.file.endswith(f"{case}.json")
    assert re.search(STRICT_PHRASE[COCO_CASES[case][0]], str(err.value)), str(err.value)


def test_coco_lenient_repairs_skips_and_warns_once(faults):
    data, caught = _load_warnings(load_coco, faults.coco_json(), faults.coco_images)
    assert len(caught) == 1
    text = str(caught[0].message)
    counts: dict[str, int] = {}
    for kind, _ in COCO_CASES.values():
        counts[kind] = counts.get(kind, 0) + 1
    for kind, n in counts.items():
        assert _phrase(kind, n) in text, (kind, text)
    assert [r.image_id for r in data.records] == [1] and data.records[0].name == "a.jpg"  # first of id 1 kept
    np.testing.assert_array_equal(data.records[0].boxes, [[10, 10, 40, 40]])


def test_repaired_formats_reach_the_model_as_rgb(faults):
    data = load_voc(faults.voc_root, "all", CLASSES, check_images=True)
    ds = DetectionDataset(data)
    for i, rec in enumerate(data.records):
        image, target = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, rec.height, rec.width), rec.name
        assert target["orig_size"] == (rec.height, rec.width)
    grey = ds[[r.name for r in data.records].index("grey")][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    exif = ds[[r.name for r in data.records].index("exif")][0]
    assert exif.shape == (3, 96, 64)  # stored 96x64, displayed (and annotated) 64 wide, 96 high


def test_training_survives_images_unreadable_only_at_getitem(faults, tmp_path):
    # Default (lenient, no check_images): the truncated JPEG and the text file pass the load (their
    # XML gives the size) and fail only when a training batch reads them.
    data = load_voc(faults.voc_root, "all", CLASSES)
    names = [r.name for r in data.records]
    assert {"truncated", "not_image"} <= set(names)
    ds = DetectionDataset(data, build_transforms(train=True, min_size=64, max_size=96))
    torch.manual_seed(0)
    n_iters = (len(ds) + 1) // 2  # one epoch of batches of 2: every sample is drawn once
    t = Trainer(model=TinyDetector(num_classes=len(CLASSES)), train_dataset=ds, run_dir=tmp_path,
                max_iters=n_iters, batch_size=2, device="cpu", progress=False, tensorboard=False,
                size_divisible=16, group_by_aspect_ratio=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = t.fit()
    assert out["iteration"] == n_iters and len(t.history) == n_iters
    texts = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    for bad in ("truncated.jpg", "not_image.jpg"):
        hits = {m for m in texts if bad in m}  # one distinct message per file (shown once by default)
        assert len(hits) == 1 and "training on the next readable sample in its place" in hits.pop(), texts
    assert all(torch.isfinite(p).all() for p in t.net.parameters())


def test_all_unreadable_is_an_error_not_a_hang(faults, tmp_path):
    data = load_voc(faults.voc_root, ["truncated", "not_image"], CLASSES)
    t = Trainer(model=TinyDetector(num_classes=2), train_dataset=DetectionDataset(data), run_dir=tmp_path,
                max_iters=1, batch_size=1, device="cpu", progress=False, tensorboard=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="none of the 2 training images can be read"):
            t.fit()
    assert not (tmp_path / "last.pt").exists()


def test_train_command_on_the_fault_set_is_lenient(faults, tmp_path):
    """tools/train.py: one load summary, unreadable images replaced, the run finishes."""
    r = run([PY, "tools/train.py", f"run_dir={tmp_path / 'run'}", f"data.root={faults.voc_root}", *TINY,
             "data.generate=null", "data.train.splits=all", f"data.class_names=[{','.join(CLASSES)}]",
             "solver.max_iters=8", "checkpoint_every=0"])
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = [line for line in r.stderr.splitlines() if "synthetic/train: " in line]
    assert len(summaries) == 1, r.stderr[-3000:]
    assert _phrase("malformed_annotation", 2) in summaries[0] and _phrase("zero_size_box", 2) in summaries[0]
    assert "truncated.jpg" in r.stderr and "not_image.jpg" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "run" / "last.pt").is_file()
