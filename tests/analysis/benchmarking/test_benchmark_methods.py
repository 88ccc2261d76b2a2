"""The benchmark on every method: self-time phases, region counts, random SVMs/regressors, and
R-CNN, SPPNet and OverFeat timed in one call on the same images (tiny models, CPU)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detkit.analysis.benchmarking.benchmark import (
    INFER_PHASES, BenchmarkError, PhaseTimer, benchmark_detectors, phase_map, random_batch, random_boxes,
    relative_to_fastest)
from detkit.analysis.benchmarking.method_inputs import DETKIT_PHASES, install_random_test_parts, proposal_source
from detkit.backbones.alexnet import alexnet, alexnet_backbone
from detkit.methods.fast_rcnn import fast_rcnn
from detkit.methods.overfeat import overfeat
from detkit.methods.rcnn import RCNN
from detkit.methods.sppnet import SPPNet
from tests.analysis.benchmarking._fake_clock import FakeClock

HW = (64, 96)


class Nested(nn.Module):
    """R-CNN's shape of a call: ``detect`` (postprocess) calls ``region_features`` (region head),
    which runs the trunk once per region; only ``detect`` does work of its own besides."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.trunk = nn.Identity()
        self.trunk.register_forward_hook(lambda *_: setattr(clock, "now", clock.now + 4.0))

    def region_features(self, x):
        self.clock.now += 1.0
        for _ in range(3):
            x = self.trunk(x)
        return x

    def detect(self, x):
        self.clock.now += 2.0
        x = self.region_features(x)
        self.clock.now += 0.5
        return x

    def forward(self, x):
        return self.detect(x)


def test_nested_phases_count_as_self_time():
    clock = FakeClock()
    model = Nested(clock)
    phases = {"trunk": ["trunk"], "region_head": ["region_features"], "postprocess": ["detect"]}
    with PhaseTimer(model, phases, clock) as timer:
        timer.start()
        model(torch.zeros(1))
        totals = timer.totals_ms()
    # The hook adds its 4 ms after the pre-hook marked the start: each trunk call spans 4 ms.
    assert totals == {"trunk": 12.0, "region_head": 1.0, "postprocess": 2.5}
    assert sum(totals.values()) == clock.now  # nothing counted twice


class Dense(nn.Module):
    def forward(self, x):
        return torch.zeros(2, 5, 3, 4)  # (offsets x N, K + 1, h, w): 2 * 3 * 4 windows


def test_rois_counter_counts_dense_locations_and_needs_a_module():
    clock = FakeClock()
    model = nn.Module()
    model.head = Dense()
    with PhaseTimer(model, {"rois": ["head"]}, clock) as timer:
        timer.start()
        model.head(torch.zeros(1))
    assert timer.rois == 24
    model.count = lambda x: x
    with pytest.raises(BenchmarkError, match="module path"):
        PhaseTimer(model, {"rois": ["count"]}, clock)


@pytest.fixture(scope="module")
def methods():
    torch.manual_seed(0)
    return {
        "rcnn": RCNN(backbone=alexnet_backbone(width=0.125), num_classes=3),  # regions batched to the default budget
        "sppnet": SPPNet(backbone=alexnet_backbone(width=0.125), num_classes=3, scales=None),
        "overfeat": overfeat(classifier=alexnet(width=0.125), backbone=alexnet_backbone(width=0.125),
                             num_classes=3, scales=[1.0]),
        "fast_rcnn": fast_rcnn(backbone=alexnet_backbone(width=0.125), num_classes=3),
    }


def test_phase_maps_and_proposal_sources_are_the_methods_declarations(methods):
    """Each method declares its phases and proposal source (detkit.methods.base.Detector)."""
    from detkit.methods.overfeat import OverFeat
    assert phase_map(methods["rcnn"]) is RCNN.phases and phase_map(methods["sppnet"]) is SPPNet.phases
    assert phase_map(methods["overfeat"]) is OverFeat.phases and phase_map(methods["fast_rcnn"]) is DETKIT_PHASES
    assert RCNN.phases["region_head"] == ["region_features"] and "trunk" not in RCNN.phases  # per-region network
    assert SPPNet.phases["trunk"] == ["conv_maps"] and OverFeat.phases["trunk"] == ["dense"]
    assert [proposal_source(m, 7) for m in methods.values()] == ["given (7/img)", "given (7/img)",
                                                                  "dense windows", "given (7/img)"]
    assert phase_map(nn.Linear(2, 2)) is DETKIT_PHASES and proposal_source(nn.Linear(2, 2), 7) == "own"


@torch.no_grad()
def test_random_test_parts_make_rcnn_score_and_regress(methods):
    model = RCNN(backbone=alexnet_backbone(width=0.125), num_classes=3, chunk_size=8).eval()
    k, d, pool = 3, model.feature_dim, model.pool_dim
    gen = torch.Generator().manual_seed(0)
    batch = random_batch(1, *HW, device=torch.device("cpu"), generator=gen)
    props = [random_boxes(6, *HW, generator=gen, min_side=8.0)]
    model.score_thresh = -1e9  # keep every (box, class) pair before NMS
    model.nms_thresh = 1.0
    before = model(batch, proposals=props)[0]
    assert torch.all(before["scores"] == 0)  # zero SVMs: every margin 0, boxes unchanged
    assert install_random_test_parts(model, generator=gen) == ["svm_weight", "bbox_regressor"]
    assert model.svm_weight.shape == (k, d) and model.svm_weight.any()
    assert model.bbox_regressor.weight.shape == (k, pool, 4) and model.bbox_regressor.weight.any()
    assert int(model.bbox_regressor.num_examples.sum()) == k
    after = model(batch, proposals=props)[0]
    assert len(after["boxes"]) == len(before["boxes"]) == 6 * k
    assert after["scores"].abs().max() > 0
    assert not torch.allclose(after["boxes"].sort(0).values, before["boxes"].sort(0).values)  # regressed
    fitted = model.svm_weight.clone()
    assert install_random_test_parts(model, generator=gen) == []  # fitted parts are left alone
    assert torch.equal(model.svm_weight, fitted)
    assert install_random_test_parts(methods["fast_rcnn"], generator=gen) == []  # no SVMs there


def test_all_region_methods_timed_on_the_same_proposals(methods):
    gen = torch.Generator().manual_seed(0)
    for m in methods.values():
        install_random_test_parts(m, generator=gen)
    out = benchmark_detectors({n: (m, phase_map(m)) for n, m in methods.items()}, input_hw=HW, batch_size=1,
                              mode="infer", warmup=0, repeats=2, num_classes=3, num_proposals=12)
    for name, res in out.items():
        lat = res["infer_latency"]
        assert lat["total_ms"]["n"] == 2 and lat["phases_ms"]["other"]["min"] >= -1e-6
        assert lat["phase_sources"]["proposals"] == [] and lat["phases_ms"]["proposals"]["max"] == 0.0
        assert sum(lat["phases_ms"][p]["min"] for p in INFER_PHASES) <= lat["total_ms"]["max"] + 1e-6
        if name != "overfeat":
            assert lat["rois_per_image"] == 12  # every given box once (R-CNN measures its memory before timing)
    assert out["rcnn"]["infer_latency"]["phase_sources"]["trunk"] == []  # R-CNN: trunk is per region
    assert out["rcnn"]["infer_latency"]["phases_ms"]["region_head"]["min"] > 0
    assert out["sppnet"]["infer_latency"]["phase_sources"]["trunk"] == ["conv_maps"]
    # OverFeat: one window per location of the offset-interleaved grid at its one scale.
    of = methods["overfeat"]
    with torch.no_grad():
        logits, _, windows, _ = of.dense(*of.eval().preprocess(random_batch(1, *HW, device=torch.device("cpu"),
                                                                         generator=gen)), 1.0)
    assert out["overfeat"]["infer_latency"]["rois_per_image"] == windows.shape[1] == logits.shape[1]
    rel = relative_to_fastest(out)
    fastest = min(r["infer_latency"]["total_ms"]["median"] for r in out.values())
    assert min(rel.values()) == 1.0
    assert math.isclose(rel["rcnn"], out["rcnn"]["infer_latency"]["total_ms"]["median"] / fastest)


def test_relative_to_fastest_by_hand():
    res = {n: {"infer_latency": {"total_ms": {"median": v}}} for n, v in (("a", 40.0), ("b", 10.0), ("c", 25.0))}
    assert relative_to_fastest(res) == {"a": 4.0, "b": 1.0, "c": 2.5}
    assert relative_to_fastest({"a": {}}) == {}
