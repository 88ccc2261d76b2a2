"""int8 static quantisation of the trunk: every convolution in int8 (conv + ReLU fused, folded batch
norms included), outputs within tolerance, LRN kept in float, the predictor, infer and benchmark
apply it, refusals named."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import detkit
from detkit.compression import fold_batch_norms, make_fast, quantize_trunk
from detkit.engine.checkpoint import build_model
from detkit.engine.config import compose_run_config
from tests._tools import load_tool
from tests.compression._checkpoint import keeps_best_detection, small_checkpoint


def _model(*overrides):
    torch.manual_seed(0)
    conf = compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.25", *overrides])
    return build_model(conf, 3).eval()


def _inputs(n, seed=0, h=96, w=128):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, h, w, generator=gen) for _ in range(n)]


def _int8_convs(module):
    fused = "torch.ao.nn.intrinsic.quantized"
    return [type(m).__name__ for m in module.modules() if type(m).__module__.startswith(fused)]


@torch.no_grad()
@pytest.mark.parametrize("fold", [False, True])
def test_trunk_within_tolerance_with_and_without_folded_norms(fold):
    model = _model("backbone.norm=bn")
    if fold:
        fold_batch_norms(model)
    x = _inputs(1, seed=5)[0]
    before = model.backbone.trunk(x)
    assert quantize_trunk(model, _inputs(4)) == 5
    # conv + (batch norm) + ReLU fused: the Identity left by folding does not split them
    assert _int8_convs(model.backbone.trunk) == ["ConvReLU2d"] * 5
    after = model.backbone.trunk(x)
    assert after.dtype == torch.float32 and after.shape == before.shape
    # 8-bit activations calibrated on other images of the same kind: a few percent of the norm
    assert (after - before).norm() <= 0.08 * before.norm()
    assert torch.corrcoef(torch.stack([after.flatten(), before.flatten()]))[0, 1] > 0.99


@torch.no_grad()
def test_lrn_stays_float_and_channels_last_is_kept():
    model = _model()  # the paper's AlexNet: LRN after conv1 and conv2
    make_fast(model)
    inputs = [x.contiguous(memory_format=torch.channels_last) for x in _inputs(3)]
    quantize_trunk(model, inputs)
    lrns = [m for m in model.backbone.trunk.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2
    out = model.backbone.trunk(inputs[0])
    assert out.is_contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --fast's autocast around the int8 trunk
        under_autocast = model.backbone.trunk(inputs[0])
    # the int8 ops ignore autocast; only the float LRN between them may round to bf16
    torch.testing.assert_close(under_autocast.float(), out, atol=0.05 * out.abs().max().item(), rtol=0.05)


def test_refusals_are_named():
    with pytest.raises(ValueError, match="Conv2d has no backbone.trunk"):
        quantize_trunk(nn.Conv2d(3, 3, 1), _inputs(1))
    model = _model()
    with pytest.raises(ValueError, match="no calibration input"):
        quantize_trunk(model, [])
    quantize_trunk(model, _inputs(1))
    with pytest.raises(ValueError, match="already quantised"):
        quantize_trunk(model, _inputs(1))


def test_rcnn_is_refused_and_other_trunks_convert():
    torch.manual_seed(0)
    rcnn = build_model(compose_run_config(["method=rcnn", "backbone=alexnet", "backbone.width=0.125"]), 3).eval()
    with pytest.raises(ValueError, match="RCNN's trunk runs on warped regions"):
        quantize_trunk(rcnn, _inputs(1))
    # ZFNet (LRN after the pools), GoogLeNet (inception branches, ceil-mode pools): every conv in int8
    for backbone in ("zfnet", "googlenet"):
        conf = compose_run_config(["method=faster_rcnn", f"backbone={backbone}", "backbone.width=0.125"])
        model = build_model(conf, 3).eval()
        convs = sum(isinstance(m, nn.Conv2d) for m in model.backbone.trunk.modules())
        x = _inputs(1, h=64, w=64)[0]
        shape = model.backbone.trunk(x).shape
        assert quantize_trunk(model, _inputs(2, h=64, w=64)) == convs
        assert model.backbone.trunk(x).shape == shape


def test_untraceable_trunk_is_named():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # data-dependent control flow

    model = _model()
    model.backbone.trunk = Branchy()
    with pytest.raises(ValueError, match="Branchy.*cannot be traced"):
        quantize_trunk(model, _inputs(1))


def test_load_with_int8_trunk_keeps_the_best_detection(tmp_path):
    path, _ = small_checkpoint(tmp_path)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (160, 200, 3), dtype=np.uint8) for _ in range(4)]
    plain = detkit.load(path, device="cpu")
    quantised = detkit.load(path, device="cpu", fast=True, int8_trunk=images[1:])
    assert _int8_convs(quantised.model.backbone.trunk) == ["ConvReLU2d"] * 5
    assert keeps_best_detection(plain(images[0]), quantised(images[0]))
    with pytest.raises(ValueError, match="int8 static quantisation runs on the CPU"):
        detkit.load(path, device="meta", int8_trunk=images)


def test_infer_and_benchmark_flags(tmp_path, capsys):
    path, _ = small_checkpoint(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    infer = load_tool("infer").main
    assert infer(["--checkpoint", str(path), str(folder), "--device", "cpu", "--int8-trunk", "2",
                  "--score-threshold", "0", "--out", str(tmp_path / "out")]) == 0
    assert "5 convolutions in int8, calibrated on 2 image(s)" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "detections.json").read_text())) > 0
    with pytest.raises(SystemExit):
        infer(["--checkpoint", str(path), str(folder), "--device", "cpu", "--int8-trunk", "0", "--out", "unused"])
    assert "N must be at least 1" in capsys.readouterr().err

    bench = load_tool("benchmark").main
    common = ["--method", "faster_rcnn", "--backbone", "alexnet", "--width", "0.125", "--input", "64x96",
              "--batch", "1", "--warmup", "1", "--repeats", "1", "--device", "cpu", "--compare", "torchvision",
              "--roi-mode", "align"]
    out = tmp_path / "b.json"
    assert bench([*common, "--mode", "infer", "--int8-trunk", "2", "--out", str(out)]) == 0
    notes = " ".join(json.loads(out.read_text())["notes"])
    assert "trunk in int8 (static quantisation): 5 convolutions, calibrated on 2 random image(s)" in notes
    assert bench([*common, "--mode", "train", "--int8-trunk", "2"]) == 1
    assert "--int8-trunk is a test-time quantisation" in capsys.readouterr().err
