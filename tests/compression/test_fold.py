"""Batch norm folded into the convolutions: same outputs, inference only, frozen norms untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detkit.compression import fold_batch_norms
from detkit.engine.checkpoint import build_model
from detkit.engine.config import compose_run_config


def _trained_like(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine terms, as training would."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


@torch.no_grad()
def test_folding_keeps_the_trunk_outputs():
    model = _trained_like(build_model(compose_run_config(
        ["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.25", "backbone.norm=bn"]), 3)).eval()
    x = torch.randn(1, 3, 96, 128)
    before = model.backbone(x)
    folded = fold_batch_norms(model)
    assert len(folded) == 5 and all(n.startswith("backbone.trunk.") for n in folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.trunk)
    torch.testing.assert_close(model.backbone(x), before, rtol=1e-4, atol=1e-4)


def test_training_mode_and_frozen_norms():
    model = build_model(compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.125",
                                            "backbone.norm=bn"]), 3)
    with pytest.raises(ValueError, match="training mode"):
        fold_batch_norms(model.train())
    resnet = build_model(compose_run_config(["method=faster_rcnn", "backbone=resnet50", "backbone.width=0.125"]), 3)
    assert fold_batch_norms(resnet.eval()) == []  # frozen_bn: not torch's BatchNorm2d, left alone


def test_make_fast_folds_only_when_asked_and_sets_channels_last():
    from detkit.compression import make_fast

    conf = compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.125", "backbone.norm=bn"])
    training = build_model(conf, 3)
    assert make_fast(training, fold=False) == [] and training.channels_last
    assert any(isinstance(m, nn.BatchNorm2d) for m in training.modules())
    inference = build_model(conf, 3)
    assert len(make_fast(inference)) == 5 and not inference.training
    conv = inference.backbone.trunk[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
