"""int8 dynamic quantisation of the fc layers: outputs within tolerance, every Linear replaced, the
predictor and the benchmark apply it, refusals named."""
from __future__ import annotations

import pytest
import torch
from torch import nn
import detkit
from detkit.compression import compress_region_head, quantize_linear_layers
from detkit.engine.checkpoint import build_model
from detkit.engine.config import compose_run_config
from tests.compression._checkpoint import keeps_best_detection, small_checkpoint


def _head_model():
    torch.manual_seed(0)
    return build_model(compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.25"]), 3).eval()


@torch.no_grad()
def test_region_head_and_predictor_within_tolerance():
    model = _head_model()
    pooled = torch.rand(50, model.backbone.region_head[2].in_features // 36, 6, 6)
    before = model.roi_head.predictor(model.roi_head.box_head(pooled))
    names = quantize_linear_layers(model)
    assert names == ["backbone.region_head.2", "backbone.region_head.5", "roi_head.predictor.cls_score",
                     "roi_head.predictor.bbox_pred"]
    assert not any(type(m) is nn.Linear for m in model.modules())
    after = model.roi_head.predictor(model.roi_head.box_head(pooled))
    for a, b in zip(after, before):
        scale = b.abs().max()
        # 8-bit weights and activations: errors of a few 1/256 of the output range
        assert (a - b).abs().max() <= 0.05 * scale
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


@torch.no_grad()
def test_after_svd_and_under_bf16_autocast():
    model = _head_model()
    pooled = torch.rand(20, model.backbone.region_head[2].in_features // 36, 6, 6)
    compress_region_head(model, [64, 32])
    before = model.roi_head.box_head(pooled)
    names = quantize_linear_layers(model)
    assert "backbone.region_head.2.0" in names and "backbone.region_head.2.1" in names  # SVD's two factors
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 inputs reach the int8 kernels as float32
        after = model.roi_head.box_head(pooled.bfloat16())
    assert after.dtype == torch.float32
    assert (after - before).abs().max() <= 0.05 * before.abs().max()


def test_refusals_are_named():
    with pytest.raises(ValueError, match="Conv2d has no nn.Linear layer"):
        quantize_linear_layers(nn.Conv2d(3, 3, 1))
    if torch.cuda.is_available():  # pragma: no cover - CI has no GPU
        with pytest.raises(ValueError, match="on the CPU"):
            quantize_linear_layers(nn.Linear(2, 2).cuda())


def test_load_with_int8_detects_nearly_the_same(tmp_path):
    path, _ = small_checkpoint(tmp_path)
    image = torch.randint(0, 256, (3, 200, 260), dtype=torch.uint8)
    full = detkit.load(path, device="cpu")(image)
    fast = detkit.load(path, device="cpu", fast=True)  # --fast on the CPU includes int8
    assert not any(type(m) is nn.Linear for m in fast.model.modules())
    assert keeps_best_detection(full, fast(image))
    if torch.cuda.is_available():  # pragma: no cover
        with pytest.raises(ValueError, match="int8=True quantises for the CPU"):
            detkit.load(path, device="cuda", int8=True)


def test_fast_quantises_every_method_with_fc_layers_but_rcnn():
    from detkit.backbones.alexnet import alexnet_backbone
    from detkit.compression import int8_in_fast
    from detkit.methods.fast_rcnn import fast_rcnn
    from detkit.methods.rcnn import RCNN
    from detkit.methods.sppnet import SPPNet

    assert int8_in_fast(_head_model()) and int8_in_fast(fast_rcnn(backbone=alexnet_backbone(width=0.125), num_classes=2))
    assert int8_in_fast(SPPNet(backbone=alexnet_backbone(width=0.125), num_classes=2, scales=None))
    assert not int8_in_fast(RCNN(backbone=alexnet_backbone(width=0.125), num_classes=2))  # measured slower
    assert not int8_in_fast(nn.Sequential(nn.Conv2d(3, 4, 3)))  # nothing to quantise
