"""tools/train.py method=rcnn|sppnet end to end, then tools/infer.py with on-the-fly selective search
(subprocesses, CPU, a tiny generated set)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "0"}


def _tiny(tmp, method):
    return [f"method={method}", "backbone=alexnet", "backbone.width=0.125", f"run_dir={tmp / method}",
            f"data.root={tmp / 'syn'}", "data.generate.num_images=6", "+data.generate.image_size=[64,96]",
            "+data.generate.object_size=[20,40]", "data.transforms.min_size=64", "data.transforms.max_size=96",
            "data.proposals.mode=single", "data.proposals.max_proposals=12", "data.proposals.workers=1",
            f"data.proposals.cache_dir={tmp / 'props'}", "method.stages.finetune.max_iters=2",
            "method.model.batch_regions=16", "num_workers=0", "progress=false", "tensorboard=false",
            "test.coco=false", "method.stages.bbox.min_iou=0.3"]


def _run(args):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rcnn_cli")
    for method, extra in (("rcnn", []), ("sppnet", ["method.model.scales=null"])):
        r = _run(["tools/train.py", *_tiny(tmp, method), *extra])
        assert r.returncode == 0, r.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("method", ["rcnn", "sppnet"])
def test_train_writes_stages_metrics_and_detections(runs, method):
    run = runs / method
    for f in ("stage1_finetune.pt", "stage2_svm.pt", "stage3_bbox.pt", "last.pt", "metrics.json", "detections.json"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0 and metrics["test_model_seconds_per_image"] > 0
    assert metrics["stages"]["finetune"]["iteration"] == 2


def test_infer_runs_selective_search_on_the_fly(runs):
    image = sorted((runs / "syn" / "JPEGImages").iterdir())[0]
    out = runs / "infer"
    r = _run(["tools/infer.py", "--checkpoint", str(runs / "rcnn" / "last.pt"), str(image), "--out", str(out),
              "--score-threshold", "-100", "--device", "cpu"])
    assert r.returncode == 0, r.stderr[-3000:]
    dets = json.loads((out / "detections.json").read_text())
    assert dets and all(d["file_name"] == image.name and len(d["bbox"]) == 4 for d in dets)
    assert (out / f"{image.stem}.jpg").is_file()
