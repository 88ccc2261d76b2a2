"""Fast R-CNN end to end as a user runs it: tools/train.py computes selective search proposals into a
cache, trains and evaluates on them; tools/infer.py then detects through the built-in proposer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from detkit.engine.checkpoint import load_checkpoint
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]


def _infer_module():
    """tools/infer.py imported in-process (a second subprocess would pay seconds of torch import)."""
    module = load_tool("infer")
    return module


def test_train_with_selective_search_then_infer(tmp_path):
    data, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    args = [
        "method=fast_rcnn", "backbone=alexnet", "backbone.width=0.125", "data=synthetic", f"data.root={data}",
        "data.generate.num_images=8", "+data.generate.image_size=[64,96]", "+data.generate.object_size=[20,40]",
        "data.transforms.min_size=96", "data.transforms.max_size=128",
        f"data.proposals.cache_dir={cache}", "data.proposals.workers=1",
        "solver.max_iters=3", "solver.warmup_iters=0", "solver.milestones=[]", "solver.batch_size=2",
        "num_workers=0", "checkpoint_every=0", "tensorboard=false", "progress=false", "device=cpu",
        f"run_dir={run}", "test.coco=false",
    ]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The proposals were computed into the cache: one file per image of each split used.
    n_train = len((data / "ImageSets" / "Main" / "trainval.txt").read_text().split())
    n_test = len((data / "ImageSets" / "Main" / "test.txt").read_text().split())
    assert len(list(cache.glob("fast-500-min20-k150-150-sigma0.8/*.npz"))) == n_train + n_test
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["iteration"] == 3 and metrics["num_images"] == n_test and "mAP" in metrics["voc07"]
    ckpt = load_checkpoint(run / "last.pt")  # weights_only=True, as every detkit load
    assert ckpt["config"]["method"]["model"]["proposer"] == "selective_search"

    # tools/infer.py passes no proposals: the model's selective search proposer supplies them.
    image = sorted((data / "JPEGImages").glob("*.jpg"))[0]
    out = tmp_path / "infer"
    infer = _infer_module()
    assert infer.main(["--checkpoint", str(run / "last.pt"), str(image), "--out", str(out),
                       "--score-threshold", "0", "--device", "cpu"]) == 0
    dets = json.loads((out / "detections.json").read_text())
    assert (out / image.name).is_file() and len(dets) > 0
    boxes = np.array([d["bbox"] for d in dets])  # x, y, w, h inside the 64-96 px image
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 96 + 1e-3).all()
    assert {d["file_name"] for d in dets} == {image.name}
