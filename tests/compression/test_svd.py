"""Truncated SVD of the region head (Fast R-CNN §3.1): the factorisation, the head it replaces,
and a detector that still detects."""
from __future__ import annotations

import pytest
import torch
from torch import nn
import detkit
from detkit.compression import compress_region_head, truncated_svd
from detkit.engine.checkpoint import build_model
from detkit.engine.config import compose_run_config
from tests.compression._checkpoint import keeps_best_detection, small_checkpoint


def test_a_low_rank_layer_is_reproduced_exactly():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48)
    with torch.no_grad():  # make W rank 8
        layer.weight.copy_(torch.randn(48, 8) @ torch.randn(8, 64))
    new, energy = truncated_svd(layer, 8)
    x = torch.randn(5, 64)
    torch.testing.assert_close(new(x), layer(x), rtol=1e-4, atol=1e-4)
    assert energy == pytest.approx(1.0)
    assert new[0].weight.shape == (8, 64) and new[1].weight.shape == (48, 8) and new[0].bias is None


def test_truncation_error_is_the_dropped_singular_values():
    """Eckart-Young: ||W - W_t||_F^2 = sum of the dropped squared singular values."""
    torch.manual_seed(1)
    layer = nn.Linear(40, 30)
    new, energy = truncated_svd(layer, 10)
    approx = new[1].weight @ new[0].weight
    sigma = torch.linalg.svdvals(layer.weight.detach().double())
    err = (layer.weight.detach().double() - approx.double()).pow(2).sum()
    torch.testing.assert_close(err, sigma[10:].pow(2).sum(), rtol=1e-4, atol=1e-6)
    assert energy == pytest.approx(float(sigma[:10].pow(2).sum() / sigma.pow(2).sum()), rel=1e-6)


def test_bad_ranks_are_refused():
    with pytest.raises(ValueError, match="rank must be in 1..29"):
        truncated_svd(nn.Linear(40, 30), 30)
    model = build_model(compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.125"]), 3)
    with pytest.raises(ValueError, match="saves nothing"):
        compress_region_head(model, [500])
    with pytest.raises(ValueError, match="3 ranks for 2 fully connected layers"):
        compress_region_head(model, [8, 8, 8])
    resnet = build_model(compose_run_config(["method=faster_rcnn", "backbone=resnet50", "backbone.width=0.125"]), 3)
    with pytest.raises(ValueError, match="no fully connected layers"):
        compress_region_head(resnet, [8])


def test_the_roi_head_runs_the_factorised_layers():
    """The region head is one module under two names; both see the replacement."""
    model = build_model(compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.125"]), 3)
    reports = compress_region_head(model, [64, 0])
    assert [r.name for r in reports] == ["backbone.region_head.2"]
    assert model.roi_head.box_head is model.backbone.region_head
    assert isinstance(model.roi_head.box_head[2], nn.Sequential)
    assert reports[0].macs_after == 64 * sum(reports[0].shape) < reports[0].macs_before


def test_load_with_svd_detects_nearly_the_same(tmp_path):
    """A high rank keeps the detections; the predictor path (detkit.load(svd=...)) applies it."""
    path, model = small_checkpoint(tmp_path)
    image = torch.randint(0, 256, (3, 200, 260), dtype=torch.uint8)
    full = detkit.load(path, device="cpu")(image)
    fc6_rank = min(model.backbone.region_head[2].weight.shape) // 2
    svd = detkit.load(path, device="cpu", svd=[fc6_rank])
    assert isinstance(svd.model.backbone.region_head[2], nn.Sequential)
    # the best detection is still there: same label, overlapping box
    assert keeps_best_detection(full, svd(image))
