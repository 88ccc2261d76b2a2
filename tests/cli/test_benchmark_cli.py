"""tools/benchmark.py from the command line: a tiny Faster R-CNN with --compare torchvision, and
all five methods in one run (--methods)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
TINY = ["--backbone", "alexnet", "--width", "0.125", "--input", "64x96", "--batch", "2",
        "--warmup", "1", "--repeats", "2", "--device", "cpu", "--num-classes", "3"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240)


def test_cli_compare_writes_complete_json_and_prints_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(["--method", "faster_rcnn", *TINY, "--compare", "torchvision", "--roi-mode", "align",
                 "--set", "method.model.rpn_post_nms_top_n_test=50", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == "detkit-benchmark/1.1"
    s = result["settings"]
    assert s["input_hw"] == [64, 96] and s["precision"] == "fp32" and s["roi_pool_mode"] == "align"
    # Options reached the model built from configs/: width 0.125 -> 256 * 0.125 trunk channels.
    assert result["model_config"]["backbone"]["width"] == 0.125
    assert result["model_config"]["method"]["model"]["rpn_post_nms_top_n_test"] == 50
    for key in ("cpu", "cpu_cores", "torch", "torchvision", "device"):
        assert result["machine"][key] not in (None, "")
    assert "commit" in result["git"]
    for name in ("detkit", "torchvision"):
        res = result["results"][name]
        assert set(res) == {"train", "infer_latency", "infer_throughput"}
        for r in res.values():
            assert r["total_ms"]["n"] == 2 and r["total_ms"]["median"] > 0
            assert all(v["min"] >= 0 for k, v in r["phases_ms"].items() if k != "other")
    # In eval detkit runs the region head only on proposals that survived NMS: on a 64x96 image
    # (4 x 6 x 9 = 216 anchors, random weights) far fewer than the 50 slots.
    for key in ("infer_latency", "infer_throughput"):
        assert 0 < result["results"]["detkit"][key]["rois_per_image"] < 50
    assert result["results"]["detkit"]["train"]["rois_per_image"] == 64  # fixed sampled slots
    det, tv = result["results"]["detkit"], result["results"]["torchvision"]
    assert math.isclose(result["ratios"]["train_speedup"],
                        det["train"]["images_per_s"] / tv["train"]["images_per_s"])
    assert "detkit / torchvision infer_latency_ratio" in proc.stdout
    assert "infer_latency (b1)" in proc.stdout and "train (b2)" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # Hydra wrote nothing


def test_bad_input_is_one_line_error(capsys):
    tool = load_tool("benchmark")  # in-process: main() is what the script runs
    assert tool.main(["--input", "600by1000"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --input must be HxW")
    assert tool.main(["--backbone", "no_such_net", "--input", "64x96", "--device", "cpu"]) == 1
    assert "backbone/no_such_net" in capsys.readouterr().err
    assert tool.main(["--method", "fast_rcnn", *TINY, "--compare", "torchvision"]) == 1
    assert "needs a Faster R-CNN" in capsys.readouterr().err


def test_cli_compile_option(tmp_path, capsys):
    out = tmp_path / "bench.json"
    # The eager backend exercises the whole path (dynamo capture of the parts) without code
    # generation, which takes minutes on the shared CPU.
    proc = _run(["--method", "faster_rcnn", *TINY, "--mode", "infer", "--compile", "--compile-backend", "eager",
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["compile"] == "default"
    note = next(n for n in result["notes"] if n.startswith("detkit compiled"))
    for part in ("backbone.trunk", "rpn.head", "backbone.region_head", "roi_head.predictor"):
        assert part in note
    res = result["results"]["detkit"]["infer_latency"]
    assert res["total_ms"]["n"] == 2 and res["total_ms"]["median"] > 0 and 0 < res["rois_per_image"] < 300
    assert "compiled (default)" in proc.stdout
    tool = load_tool("benchmark")
    assert tool.main(["--method", "faster_rcnn", *TINY, "--compile", "fastest"]) == 1
    assert "mode must be one of" in capsys.readouterr().err


FIVE = ["rcnn", "sppnet", "overfeat", "fast_rcnn", "faster_rcnn"]


def test_cli_methods_times_all_five_in_one_run(tmp_path):
    out = tmp_path / "five.json"
    # Tiny: one SPPNet scale and one OverFeat scale (the papers' 5 and 6 upscale 64 px images to
    # 1200-2000 px), 20 given proposals.
    proc = _run(["--methods", *FIVE, "--backbone", "alexnet", "--width", "0.125", "--input", "64x96",
                 "--proposals", "20", "--warmup", "1", "--repeats", "2", "--device", "cpu", "--num-classes", "3",
                 "--roi-mode", "align", "--set", "sppnet:method.model.scales=null",
                 "--set", "overfeat:method.model.scales=[1.0]", "--set", "rcnn:method.model.detections_per_img=50",
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["schema"] == "detkit-benchmark/1.1"
    s = result["settings"]
    assert s["methods"] == FIVE and s["mode"] == "infer" and s["batch"] == 1
    assert list(result["results"]) == FIVE
    # Per-method overrides reached only their method; --roi-mode only the methods with RoI pooling.
    cfgs = result["model_config"]["methods"]
    assert cfgs["sppnet"]["model"]["scales"] is None and cfgs["overfeat"]["model"]["scales"] == [1.0]
    assert cfgs["rcnn"]["model"]["detections_per_img"] == 50
    assert cfgs["sppnet"]["model"]["detections_per_img"] == 100 == cfgs["fast_rcnn"]["model"]["detections_per_img"]
    assert s["roi_pool_mode"] == {"rcnn": None, "sppnet": None, "overfeat": None, "fast_rcnn": "align",
                                  "faster_rcnn": "align"}
    assert result["model_config"]["backbone"]["width"] == 0.125
    info = result["methods"]
    assert [info[m]["proposals"] for m in FIVE] == ["given (20/img)"] * 2 + ["dense windows", "given (20/img)", "RPN"]
    assert info["rcnn"]["random_test_parts"] == ["svm_weight", "bbox_regressor"] == info["sppnet"]["random_test_parts"]
    medians = {m: result["results"][m]["infer_latency"]["total_ms"]["median"] for m in FIVE}
    for m in FIVE:
        lat = result["results"][m]["infer_latency"]
        assert lat["batch_size"] == 1 and lat["total_ms"]["n"] == 2
        assert math.isclose(result["relative"][m], medians[m] / min(medians.values()))
        if info[m]["proposals"].startswith("given"):
            assert lat["rois_per_image"] == 20 and lat["phases_ms"]["proposals"]["max"] == 0.0
    assert result["results"]["faster_rcnn"]["infer_latency"]["phase_sources"]["proposals"] == ["rpn"]
    assert result["results"]["overfeat"]["infer_latency"]["phase_sources"]["trunk"] == ["dense"]
    lines = proc.stdout.splitlines()
    for m in FIVE:
        assert any(line.startswith(m + " ") for line in lines)
    assert "Proposal search (selective search) excluded" in proc.stdout
    # The experiments report reads the JSON as it reads a --method run's.
    from detkit.analysis.suite.results_report import bench_table
    rows = bench_table([{"name": "five", "status": "done", "result": result}])
    assert sum("infer_latency (b1)" in r for r in rows) == 5


def test_methods_bad_options_are_one_line_errors(capsys):
    tool = load_tool("benchmark")
    assert tool.main(["--methods", "rcnn", "fast_rcnn", "--mode", "train", "--device", "cpu"]) == 1
    assert "inference" in capsys.readouterr().err
    assert tool.main(["--methods", "rcnn", "rcnn", "--device", "cpu"]) == 1
    assert "twice" in capsys.readouterr().err
    assert tool.main(["--methods", "fast_rcnn", "faster_rcnn", "--compare", "torchvision"]) == 1
    assert "not --methods" in capsys.readouterr().err
    assert tool.main(["--methods", "fast_rcnn", *TINY[:8], "--set", "rcnn:method.model.context=0"]) == 1
    assert "'rcnn' is not one of" in capsys.readouterr().err


def test_cli_fast_and_svd_apply_to_detkit_only(tmp_path, capsys):
    from detkit.engine.precision import resolve_amp
    import torch

    tool = load_tool("benchmark")
    out = tmp_path / "bench.json"
    assert tool.main(["--method", "faster_rcnn", *TINY, "--mode", "infer", "--compare", "torchvision",
                      "--roi-mode", "align", "--fast", "--svd", "32", "8", "--int8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    expected = "bf16" if resolve_amp("auto", torch.device("cpu")) == "bf16" else "fp32"
    assert result["settings"]["precision_by_model"] == {"detkit": expected, "torchvision": "fp32"}
    notes = " ".join(result["notes"])
    assert f"--fast: detkit in {expected}" in notes and "channels_last" in notes
    assert "rank 32" in notes and "rank 8" in notes  # fc6 and fc7 of the eighth-width AlexNet
    assert "int8" in notes and "roi_head.predictor.cls_score" in notes and result["settings"]["int8"]
    assert tool.main(["--method", "faster_rcnn", *TINY, "--svd", "8"]) == 1  # training mode
    assert "--mode infer" in capsys.readouterr().err
    assert tool.main(["--methods", "rcnn", "faster_rcnn", *TINY[:8], "--fast"]) == 1
    assert "use --method" in capsys.readouterr().err
    assert tool.main(["--method", "faster_rcnn", *TINY, "--int8"]) == 1  # training mode
    assert "--int8 is a test-time quantisation" in capsys.readouterr().err
