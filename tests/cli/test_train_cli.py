"""tools/train.py and tools/infer.py end to end, as subprocesses, on a tiny generated set (CPU)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "0"}

TINY = [
    "backbone=alexnet", "backbone.width=0.125", "data.generate.num_images=10",
    "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]",
    "data.transforms.min_size=64", "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
    "solver.max_iters=4", "solver.warmup_iters=1", "solver.batch_size=2", "num_workers=0",
    "checkpoint_every=2", "progress=false", "test.batch_size=2",
]


def _run(args, cwd=REPO, timeout=300):
    return subprocess.run([PY, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    run_dir, root = tmp / "run", tmp / "syn"
    r = _run(["tools/train.py", f"run_dir={run_dir}", f"data.root={root}", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, run_dir, root


def test_train_writes_checkpoint_metrics_and_config(trained):
    _, run_dir, root = trained
    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["class_names"] == ["circle", "cross", "square", "triangle"]
    assert ckpt["config"]["backbone_name"] == "alexnet" and ckpt["config"]["backbone"]["width"] == 0.125
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("voc07", "voc12", "coco"):
        assert key in metrics
    assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0
    assert metrics["stopped_by"] == "max_iters" and metrics["iteration"] == 4 and metrics["train_seconds"] > 0
    assert metrics["train_images_per_second"] == pytest.approx(4 * 2 / metrics["train_seconds"])
    assert 0 < metrics["test_model_seconds_per_image"] <= metrics["test_seconds_per_image"]
    assert metrics["machine"]["device"] == "cpu" and "commit" in metrics["git"]
    assert "solver.max_iters=4" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    dets = json.loads((run_dir / "detections.json").read_text())
    assert isinstance(dets, list) and all({"image_id", "category_id", "bbox", "score"} <= set(d) for d in dets)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (root / "Annotations").is_dir()


def test_resume_when_finished_and_extend(trained):
    _, run_dir, root = trained
    r = _run(["tools/train.py", f"run_dir={run_dir}", f"data.root={root}", *TINY, "solver.max_iters=6",
              "resume=true", "test.enabled=false"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(run_dir / "last.pt", weights_only=True)["iteration"] == 6


def test_infer_folder_then_eval(trained):
    tmp, run_dir, root = trained
    images = tmp / "images"
    images.mkdir()
    for name in sorted(os.listdir(root / "JPEGImages"))[:2]:
        shutil.copy(root / "JPEGImages" / name, images / name)
    (images / "notes.txt").write_text("not an image")  # ignored: folders yield image files only
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # unreadable: skipped with a warning
    out = tmp / "infer"
    r = _run(["tools/infer.py", "--checkpoint", str(run_dir / "last.pt"), str(images), "--out", str(out),
              "--score-threshold", "0.0", "--max-detections", "5", "--device", "cpu", "--batch-size", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "broken.jpg" in r.stderr and "skipped" in r.stderr
    pictures = sorted(p.name for p in out.glob("*.jpg"))
    assert pictures == sorted(p.name for p in images.glob("0*.jpg"))
    dets = json.loads((out / "detections.json").read_text())
    assert dets and all(d["file_name"] in pictures for d in dets)
    assert max(sum(d["image_id"] == i for d in dets) for i in (0, 1)) <= 5
    if not (REPO / "tools" / "eval.py").is_file():
        pytest.skip("tools/eval.py not present")
    r = _run(["tools/eval.py", "--voc-root", str(root), "--split", "trainval", "--detections",
              str(out / "detections.json"), "--out", str(tmp / "eval.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    scored = json.loads((tmp / "eval.json").read_text())
    assert scored["num_detections"] == len(dets)


def _infer_main():
    """tools/infer.py's main(), in-process (the error paths need no fresh interpreter)."""

    mod = load_tool("infer")
    return mod.main


def test_infer_clear_errors(trained, tmp_path, capsys):
    _, run_dir, _ = trained
    main = _infer_main()
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(run_dir / "last.pt"), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no images or videos found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["--checkpoint", str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "bad.pt: cannot read checkpoint" in capsys.readouterr().err


def test_mismatched_checkpoint_is_refused(trained, tmp_path, capsys):
    _, run_dir, _ = trained
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    ckpt["class_names"] = ckpt["class_names"][:2]  # config/weights now disagree on the class count
    torch.save(ckpt, tmp_path / "m.pt")
    assert _infer_main()(["--checkpoint", str(tmp_path / "m.pt"), str(run_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "m.pt: weights do not fit" in err and "shape mismatch" in err


def test_compile_config_compiles_in_place_and_keeps_checkpoint_keys(trained, tmp_path):
    """compile.enabled=true (the cheap eager backend) trains, logs what it compiled, and writes a
    checkpoint with exactly the uncompiled run's keys (nn.Module.compile works in place)."""
    _, run_dir, root = trained
    out = tmp_path / "compiled"
    r = _run(["tools/train.py", f"run_dir={out}", f"data.root={root}", *TINY, "solver.max_iters=2",
              "test.enabled=false", "compile.enabled=true", "compile.backend=eager", "cudnn_benchmark=false"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compile: trunk -> backbone.trunk" in r.stderr + r.stdout
    compiled = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["model"]
    plain = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    assert list(compiled) == list(plain)
