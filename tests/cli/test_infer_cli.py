"""tools/infer.py --compile: same detections as without it (eager backend: cheap on the CPU)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from PIL import Image

from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state
from tests._tools import load_tool


def _checkpoint(tmp_path):
    """A tiny untrained Faster R-CNN checkpoint (AlexNet at 1/8 width, 64-96 px test images)."""
    bench = load_tool("benchmark")
    args = argparse.Namespace(method="faster_rcnn", backbone="alexnet", width=0.125, norm=None, roi_mode="align",
                              channels_last=False, overrides=["method.model.box_score_thresh=0.0"])
    cfg = bench.compose_config(args)
    cfg["data"] = {"transforms": {"min_size": 64, "max_size": 96}}
    torch.manual_seed(0)
    model = build_model(cfg, 2)
    path = tmp_path / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=cfg, class_names=["a", "b"]), path)
    return path


def test_compile_gives_the_same_detections(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    images = tmp_path / "in"
    images.mkdir()
    for i, (h, w) in enumerate(((64, 96), (80, 70))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    main = load_tool("infer").main
    common = ["--checkpoint", str(ckpt), str(images), "--device", "cpu", "--score-threshold", "0.0",
              "--batch-size", "2"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "compiled"), "--compile", "--compile-backend", "eager"]) == 0
    plain = json.loads((tmp_path / "plain" / "detections.json").read_text())
    compiled = json.loads((tmp_path / "compiled" / "detections.json").read_text())
    assert len(plain) > 0 and plain == compiled
    assert main([*common, "--out", str(tmp_path / "bad"), "--compile", "--compile-backend", "nope"]) == 2
    assert "unknown torch.compile backend 'nope'" in capsys.readouterr().err


def test_override_changes_test_time_settings(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    main = load_tool("infer").main
    common = ["--checkpoint", str(ckpt), str(images), "--device", "cpu", "--score-threshold", "0.0"]
    assert main([*common, "--out", str(tmp_path / "all")]) == 0
    assert main([*common, "--out", str(tmp_path / "one"), "--set", "method.model.box_detections_per_img=1"]) == 0
    every = json.loads((tmp_path / "all" / "detections.json").read_text())
    one = json.loads((tmp_path / "one" / "detections.json").read_text())
    per_image = [sum(d["image_id"] == i for d in one) for i in range(2)]
    assert len(every) > 2 and per_image == [1, 1]
    best = [max((d for d in every if d["image_id"] == i), key=lambda d: d["score"]) for i in range(2)]
    assert sorted(d["score"] for d in one) == sorted(d["score"] for d in best)
    assert main([*common, "--out", str(tmp_path / "bad"), "--set", "methd.model.x=1"]) == 2
    assert "no section 'methd'" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "bad"), "--set", "method.model.box_detections_per_im=1"]) == 2
    assert "box_detections_per_im" in capsys.readouterr().err


def test_images_run_under_the_predictors_autocast(tmp_path, monkeypatch):
    """--fast (or --amp) picks the predictor's precision; the image path must run under it."""
    import detkit.engine.inference as inference
    from detkit import predictor as predictor_module

    ckpt = _checkpoint(tmp_path)
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(images / "im0.png")
    real_load, real_detect, seen = predictor_module.load, inference.detect, []

    def load_bf16(*args, **kwargs):
        p = real_load(*args, **kwargs)
        p.amp = "bf16"
        return p

    def recording_detect(*args, **kwargs):
        seen.append(kwargs.get("amp", "none"))
        return real_detect(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "load", load_bf16)
    monkeypatch.setattr(inference, "detect", recording_detect)
    assert load_tool("infer").main(["--checkpoint", str(ckpt), str(images), "--device", "cpu",
                                    "--out", str(tmp_path / "out")]) == 0
    assert seen == ["bf16"]
