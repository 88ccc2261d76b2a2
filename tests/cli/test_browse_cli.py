"""detkit browse: counts, problems and pictures of a data set, as loaded and as training sees it."""
from __future__ import annotations

import json

from PIL import Image

from tests._tools import load_tool


def _voc(tmp_path):
    from detkit.data.synthetic import make_synthetic_voc
    root = make_synthetic_voc(tmp_path / "syn", num_images=10, image_size=(64, 96), object_size=(16, 40), seed=0)
    # one fault the reader repairs: a box reaching past the image
    xml = sorted((root / "Annotations").glob("*.xml"))[0]
    text = xml.read_text()
    import re
    text = re.sub(r"<xmax>\d+</xmax>", "<xmax>5000</xmax>", text, count=1)
    xml.write_text(text)
    return root


def test_browse_prints_counts_and_problems_and_draws(tmp_path, capsys):
    root = _voc(tmp_path)
    main = load_tool("browse").main
    assert main(["data=voc", f"data.root={root}", "--num", "3", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "objects" in out and "clipped 1 box to the image" in out and "3 picture(s)" in out
    stats = json.loads((tmp_path / "b" / "stats.json").read_text())
    assert stats["objects"] == sum(c["objects"] for c in stats["classes"]) > 0
    assert sum(o["boxes"] for o in stats["box_side_octaves"]) == stats["objects"]
    pictures = sorted((tmp_path / "b").glob("*.jpg"))
    assert len(pictures) == 3
    first = Image.open(pictures[0])
    assert first.size == Image.open(root / "JPEGImages" / pictures[0].name).size  # as loaded: original size


def test_augmented_pictures_are_the_training_view(tmp_path, capsys):
    root = _voc(tmp_path)
    main = load_tool("browse").main
    assert main(["data=voc", f"data.root={root}", "data.transforms.min_size=200", "data.transforms.max_size=400",
                 "--num", "2", "--augmented", "--out", str(tmp_path / "a")]) == 0
    sizes = {min(Image.open(p).size) for p in (tmp_path / "a").glob("*.jpg")}
    assert sizes == {200}  # resized by the training transform


def test_errors_are_one_line(tmp_path, capsys):
    main = load_tool("browse").main
    assert main(["data=voc", f"data.root={tmp_path / 'nothing'}", "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
