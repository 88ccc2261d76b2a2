"""compile_model: in-place torch.compile of trunk / RPN head / region head. The "eager" backend runs
dynamo's capture without code generation, so these tests are cheap on the CPU; an inductor
compile of even a tiny model takes over a minute on the shared 2-core machine, so none is here."""
import io
import logging

import pytest
import torch

from detkit.engine.compile import CompileError, compile_model, compiled_modules
from tests.methods.test_fast_rcnn import synthetic_batch as fast_batch
from tests.methods.test_fast_rcnn import tiny_fast_rcnn
from tests.methods.test_faster_rcnn import synthetic_batch, tiny_faster_rcnn


def test_compiled_faster_rcnn_matches_eager_and_keeps_state_dict(caplog):
    batch, targets = synthetic_batch()
    model = tiny_faster_rcnn(box_score_thresh=0.0).eval()
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(batch)
    with caplog.at_level(logging.INFO, logger="detkit.engine.compile"):
        assert compile_model(model, backend="eager") is model  # in place
    assert "rpn -> rpn.head" in caplog.text
    # backbone.region_head is roi_head.box_head (one module, compiled once).
    assert compiled_modules(model) == ["backbone.trunk", "backbone.region_head", "rpn.head", "roi_head.predictor"]
    with torch.no_grad():
        out = model(batch)
    for a, b in zip(ref, out):
        assert len(a["boxes"]) > 0
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
        assert torch.equal(a["labels"], b["labels"])
    state = model.state_dict()
    assert list(state) == keys  # no "_orig_mod." prefixes: checkpoints are unchanged
    # A checkpoint of the compiled model loads into a fresh uncompiled one, strictly, and agrees.
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = tiny_faster_rcnn(box_score_thresh=0.0)
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # make sure the load is what restores the weights
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    with torch.no_grad():
        again = fresh(batch)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(ref, again))
    # The compiled model still trains (fixed shapes), with the same losses as eager.
    torch.manual_seed(1)
    compiled_losses = model.train()(batch, targets)
    torch.manual_seed(1)
    eager_losses = fresh.train()(batch, targets)
    for k, v in eager_losses.items():
        torch.testing.assert_close(compiled_losses[k], v)
    sum(compiled_losses.values()).backward()
    assert model.backbone.trunk[0].weight.grad.abs().sum() > 0


def test_parts_a_method_lacks_are_logged_and_skipped(caplog):
    model = tiny_fast_rcnn(score_thresh=0.0).eval()
    batch, _, proposals = fast_batch()
    with torch.no_grad():
        ref = model(batch, proposals=proposals)
    with caplog.at_level(logging.INFO, logger="detkit.engine.compile"):
        compile_model(model, backend="eager", parts=("rpn", "region_head"))
    assert "FastRCNN has no rpn" in caplog.text
    assert compiled_modules(model) == ["backbone.region_head", "roi_head.predictor"]  # trunk not asked for
    with torch.no_grad():
        out = model(batch, proposals=proposals)
    assert all(torch.equal(a["scores"], b["scores"]) for a, b in zip(ref, out))


def test_bad_settings_are_clear_errors():
    model = tiny_fast_rcnn()
    with pytest.raises(CompileError, match="unknown part"):
        compile_model(model, parts=("neck",))
    with pytest.raises(CompileError, match="mode must be one of"):
        compile_model(model, mode="fastest")
    with pytest.raises(ValueError, match="unknown torch.compile backend 'nope'"):
        compile_model(model, backend="nope")
    assert compiled_modules(model) == []  # nothing half-done
