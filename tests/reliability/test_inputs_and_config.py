"""Odd inference inputs (tools/infer.py) and config errors (tools/train.py): a clear outcome each.

Already covered in tests/cli/test_train_cli.py: an empty folder (exit 2, "no images or videos found"), a
truncated .jpg among good images (skipped with a warning), a corrupt checkpoint and a checkpoint
whose class count does not fit its config (exit 2, one line).
"""
import json
import resource
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from ._cli import PY, make_data, run, train_cmd
from tests._tools import load_tool


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer")
    data = make_data(tmp / "data", num_images=6)
    r = run(train_cmd(tmp / "run", data, "solver.max_iters=1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run" / "last.pt"


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (IHDR) with one empty IDAT: no pixel memory needed."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def _video(path):
    """A real 5-frame MJPG video (cv2.VideoWriter); raw MP4 header bytes when no encoder is present."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 32))
    if writer.isOpened():
        for i in range(5):
            writer.write(np.full((32, 32, 3), 40 * i, np.uint8))
    writer.release()
    if not path.exists() or path.stat().st_size == 0:
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 64)
    return path


def _infer_main():
    mod = load_tool("infer")
    return mod.main


def test_huge_tiny_bomb_video_and_text_inputs(checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(inputs / "one_pixel.png")
    # 10,000 x 10,000 (100 M pixels: above PIL's 89 M warning limit, below its 179 M error limit);
    # a flat PNG compresses to ~0.3 MB, decoding it needs 300 MB of RGB.
    big = np.zeros((10_000, 10_000, 3), np.uint8)
    big[2000:6000, 3000:7000] = (0, 200, 0)
    Image.fromarray(big).save(inputs / "huge.png", compress_level=1)
    del big
    _png_header_only(inputs / "bomb.png", 20_000, 20_000)  # 400 M pixels: refused before decoding
    video = _video(inputs / "clip.mp4")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    # files named explicitly are all tried, whatever their extension
    r = run([PY, "tools/infer.py", "--checkpoint", str(checkpoint), str(inputs / "one_pixel.png"),
             str(inputs / "huge.png"), str(inputs / "bomb.png"), str(video), str(inputs / "notes.txt"),
             "--out", str(out), "--device", "cpu", "--score-threshold", "0.0", "--batch-size", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.glob("*.jpg")) == ["huge.jpg", "one_pixel.jpg"]
    with Image.open(out / "huge.jpg") as im:
        assert im.size == (10_000, 10_000)  # drawn on the original pixels
    for name, why in (("bomb.png", "too large to decode safely"), ("notes.txt", "not an image file")):
        assert any(name in line and "skipped" in line and why in line for line in r.stderr.splitlines()), (name, r.stderr)
    if _real_video(video):  # the video is run frame by frame (detkit.video)
        assert (out / "clip.mp4").is_file() and len((out / "clip.jsonl").read_text().splitlines()) == 5
        assert "skipped 2 unreadable" in r.stdout
    else:  # header bytes only (no encoder here): skipped as a video that cannot be read
        assert "clip.mp4: skipped, cannot read it as a video" in r.stderr and "skipped 3 unreadable" in r.stdout
    dets = json.loads((out / "detections.json").read_text())
    for d in dets:  # boxes in each image's own pixels
        limit = 1 if d["file_name"] == "one_pixel.png" else 10_000
        x, y, w, h = d["bbox"]
        assert -1e-3 <= x and x + w <= limit + 1e-3 and -1e-3 <= y and y + h <= limit + 1e-3
    # memory: the 10k image is decoded once and resized; the child's peak stays far below 3 GB
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    assert peak_gb < 3.0, peak_gb


def _real_video(path) -> bool:
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    return bool(ok)


def test_folders_without_images_or_videos_and_a_broken_video(checkpoint, tmp_path, capsys):
    main = _infer_main()
    folder = tmp_path / "no_images"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    assert main(["--checkpoint", str(checkpoint), str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no images or videos found in") and ".jpg" in err and ".mp4" in err
    assert err.count("\n") == 1
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.warns(UserWarning, match=r"broken\.mp4: skipped, cannot read it as a video"):
        assert main(["--checkpoint", str(checkpoint), str(folder / "broken.mp4"), "--out", str(tmp_path / "o")]) == 2
    assert "error: none of the 1 inputs could be read as an image or a video" in capsys.readouterr().err
    assert not (tmp_path / "o" / "detections.json").exists()


def test_a_video_in_and_out(checkpoint, tmp_path, capsys):
    """A 5-frame video: an annotated video of the same size and frame count, one JSON line per
    processed frame (every 2nd with --stride 2), boxes inside the frame."""
    video = _video(tmp_path / "clip.mp4")
    if not _real_video(video):
        pytest.skip("this OpenCV cannot write an mp4v video to read back")
    main = _infer_main()
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), str(video), "--out", str(out), "--device", "cpu",
                 "--score-threshold", "0.0", "--stride", "2"]) == 0
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in lines] == [0, 2, 4] and lines[1]["time_s"] == pytest.approx(0.4)
    for e in lines:
        for d in e["detections"]:
            x, y, w, h = d["bbox"]
            assert 0 <= x and x + w <= 32 + 1e-3 and 0 <= y and y + h <= 32 + 1e-3 and d["score"] >= 0.0
    cap = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 5 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 32
    cap.release()
    assert "1 video(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------- config errors (tools/train.py)
@pytest.mark.parametrize("override, expected", [
    ("backbone=resnet999", ["Could not find 'backbone/resnet999'", "Available options in 'backbone'",
                            "alexnet", "vgg16", "resnet101"]),
    ("method=rcnn9", ["Could not find 'method/rcnn9'", "Available options in 'method'", "faster_rcnn"]),
    ("data=pascal", ["Could not find 'data/pascal'", "Available options in 'data'", "voc07", "coco"]),
    ("solver.max_iter=5", ["unknown config key 'solver.max_iter' (did you mean solver.max_iters?)",
                           "valid keys in solver: batch_size, max_iters"]),
    ("backbone.widht=0.5", ["did you mean backbone.width?", "valid keys in backbone:"]),
    ("resum=true", ["did you mean resume?"]),
])
def test_config_errors_fail_fast_listing_choices(tmp_path, override, expected):
    run_dir = tmp_path / "run"
    r = run([PY, "tools/train.py", f"run_dir={run_dir}", f"data.root={tmp_path / 'data'}", override], timeout=60)
    assert r.returncode == 1
    for text in expected:
        assert text in r.stderr, (text, r.stderr)
    assert "Traceback" not in r.stderr
    assert not run_dir.exists() and not (tmp_path / "data").exists()  # no run folder, no data generated


def test_bad_value_fails_before_training_listing_choices(tmp_path):
    data = make_data(tmp_path / "data", num_images=4)
    r = run(train_cmd(tmp_path / "run", data, "amp=fp8", "solver.max_iters=1"))
    assert r.returncode == 1
    assert "amp must be one of 'none', 'bf16', 'fp16', 'auto', got 'fp8'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
