"""The synthetic shapes set: deterministic, valid VOC, boxes on the drawn objects, loadable."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkit.data.synthetic import CLASS_HUES, make_synthetic_voc, synthesize_image
from tests._tools import load_tool

N = 12


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("synth"), num_images=N, seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(xml_path: Path):
    ann = ET.parse(xml_path).getroot()
    w, h = int(ann.findtext("size/width")), int(ann.findtext("size/height"))
    objs = []
    for o in ann.findall("object"):
        bb = [int(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        objs.append((o.findtext("name"), bb, o.findtext("difficult") == "1"))
    return ann.findtext("filename"), w, h, objs


def test_deterministic_for_a_seed(synth, tmp_path):
    again = make_synthetic_voc(tmp_path / "again", num_images=N, seed=0)
    assert _files(again) == _files(synth)
    other = make_synthetic_voc(tmp_path / "other", num_images=N, seed=1)
    assert _files(other)["Annotations/000000.xml"] != _files(synth)["Annotations/000000.xml"]


def test_layout_xml_and_boxes_inside_images(synth):
    xmls = sorted((synth / "Annotations").glob("*.xml"))
    assert len(xmls) == N and len(list((synth / "JPEGImages").glob("*.jpg"))) == N
    for x in xmls:
        filename, w, h, objs = _objects(x)
        img = cv2.imread(str(synth / "JPEGImages" / filename))
        assert img.shape == (h, w, 3) and 160 <= h <= 320 and 160 <= w <= 320
        assert 1 <= len(objs) <= 6
        for name, (x0, y0, x1, y1), _ in objs:
            assert name in CLASS_HUES
            # VOC 1-based inclusive: 1 <= xmin <= xmax <= width.
            assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h


def test_splits_disjoint_and_complete(synth):
    main = synth / "ImageSets" / "Main"
    read = {s: (main / f"{s}.txt").read_text().split() for s in ("train", "val", "test", "trainval")}
    train, val, test = set(read["train"]), set(read["val"]), set(read["test"])
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == {p.stem for p in (synth / "Annotations").glob("*.xml")}
    assert set(read["trainval"]) == train | val
    assert len(train) == round(0.6 * N) and len(val) == round(0.2 * N)


def _class_pixels(img_bgr: np.ndarray, cls: str) -> np.ndarray:
    hsv = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2HSV).astype(int)
    lo, hi = CLASS_HUES[cls]
    hue = hsv[..., 0]
    in_hue = (hue >= lo - 4) & (hue <= hi + 4)
    if lo - 4 < 0:  # red wraps around 180
        in_hue |= hue >= 180 + lo - 4
    return in_hue & (hsv[..., 1] >= 110) & (hsv[..., 2] >= 120)


def test_boxes_match_drawn_pixels():
    """Each box sits tightly on pixels of its class colour.

    Per object: the class-coloured pixels (thin lines removed by a 3x3 opening) in a window 5 px
    larger than the box have a bounding box whose sides lie within 3 px of the annotated ones.
    Occlusion by later objects and same-class neighbours in the window break this for a few
    objects, so the test asks for most of them; boxes shifted by 5 px match none.
    """
    tight = checked = 0
    for i in range(25):
        img, objects = synthesize_image(np.random.default_rng([3, i]))
        for o in objects:
            x0, y0, x1, y1 = (int(v) for v in o["box"])
            if o["difficult"]:
                assert max(x1 - x0, y1 - y0) <= 15  # difficult = tiny
                continue
            assert max(x1 - x0, y1 - y0) >= 16
            mask = _class_pixels(img, o["name"])
            assert mask[y0:y1, x0:x1].mean() >= 0.2, (i, o)  # the box is mostly the object
            opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            wx0, wy0 = max(x0 - 5, 0), max(y0 - 5, 0)
            ys, xs = np.nonzero(opened[wy0:y1 + 5, wx0:x1 + 5])
            checked += 1
            if len(xs):
                found = np.array([xs.min() + wx0, ys.min() + wy0, xs.max() + 1 + wx0, ys.max() + 1 + wy0])
                tight += bool(np.all(np.abs(found - [x0, y0, x1, y1]) <= 3))
    assert checked > 40
    assert tight >= 0.7 * checked, (tight, checked)


def test_classes_have_distinct_hue_ranges():
    ranges = sorted(CLASS_HUES.values())
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))


def test_existing_set_needs_overwrite(synth):
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_voc(synth, num_images=2)


@pytest.mark.parametrize("kwargs", [{"classes": ["hexagon"]}, {"num_images": 0},
                                    {"splits": {"train": 0.5, "test": 0.2}}, {"image_size": (300, 200)}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_synthetic_voc(tmp_path / "bad", **{"num_images": 2, **kwargs})


def test_cli_writes_and_refuses_to_clobber(tmp_path, capsys):

    cli = load_tool("make_synthetic")
    out = tmp_path / "cli"
    assert cli.main(["--out", str(out), "--num-images", "3", "--seed", "2"]) == 0
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 3
    assert cli.main(["--out", str(out), "--num-images", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_loads_with_load_voc(synth):
    from detkit.data.voc import load_voc

    main = synth / "ImageSets" / "Main"
    for split in ("train", "val", "test"):
        ids = (main / f"{split}.txt").read_text().split()
        data = load_voc(synth, split, class_names=sorted(CLASS_HUES))
        assert len(data) == len(ids)
        for rec in data.records:
            _, w, h, objs = _objects(synth / "Annotations" / f"{rec.name}.xml")
            assert (rec.width, rec.height) == (w, h)
            # 1-based inclusive -> 0-based continuous: (xmin - 1, ymin - 1, xmax, ymax).
            expected = np.array([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b, _ in objs], np.float32)
            np.testing.assert_array_equal(rec.boxes, expected.reshape(-1, 4))
            assert [data.class_names[k] for k in rec.labels] == [n for n, _, _ in objs]
            assert rec.difficult.tolist() == [d for _, _, d in objs]
