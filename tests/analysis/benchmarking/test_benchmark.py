"""detkit.analysis.benchmarking.benchmark and torchvision_compare on the CPU with a tiny model.

No timing thresholds: the tests check the statistics, the attribution of time to phases (with a
fake clock, exactly), that the result is complete and self-consistent, and that the torchvision
twin computes the same trunk, RPN head and predictor as the detkit model.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detkit.analysis.benchmarking.benchmark import (
    DETKIT_PHASES, INFER_PHASES, TRAIN_PHASES, BenchmarkError, PhaseTimer, benchmark_detector,
    benchmark_detectors, git_commit, machine_info, summarize)
from detkit.analysis.benchmarking.torchvision_compare import (
    TORCHVISION_PHASES, _anchor_permutation, build_torchvision_twin, ratios)
from detkit.backbones.alexnet import alexnet_backbone
from detkit.backbones.lrn import LocalResponseNorm
from detkit.methods.fast_rcnn import fast_rcnn
from detkit.methods.faster_rcnn import faster_rcnn
from tests.analysis.benchmarking._fake_clock import FakeClock

HW = (64, 96)
TINY = dict(input_hw=HW, batch_size=2, warmup=1, repeats=2, num_classes=3)


@pytest.fixture(scope="module")
def tiny_faster():
    torch.manual_seed(0)
    return faster_rcnn(backbone=alexnet_backbone(width=0.125), num_classes=3, roi_pool_mode="align")


def test_summarize_matches_hand_computation():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    one = summarize([7.0])
    assert one["median"] == one["q1"] == one["q3"] == 7.0
    with pytest.raises(BenchmarkError):
        summarize([])


class Toy(nn.Module):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.backbone = nn.Module()
        self.backbone.trunk = Work(clock, 5.0, inner=Work(clock, 2.0))  # nested, same phase
        self.roi_head = nn.Module()
        self.roi_head.roi_pool, self.roi_head.box_head = Work(clock, 1.0), Work(clock, 3.0)

    def preprocess(self, x):
        self.clock.now += 0.5
        return x

    def forward(self, x):
        x = self.preprocess(x)
        x = self.backbone.trunk(x)
        self.clock.now += 10.0  # unhooked work: lands in "other"
        return self.roi_head.box_head(self.roi_head.roi_pool(x))


class Work(nn.Module):
    def __init__(self, clock, ms, inner=None):
        super().__init__()
        self.clock, self.cost, self.inner = clock, ms, inner

    def forward(self, x):
        self.clock.now += self.cost
        return self.inner(x) if self.inner is not None else x


def test_phase_timer_attributes_time_exactly_and_restores_the_model():
    clock = FakeClock()
    model = Toy(clock)
    phases = {"preprocess": ["preprocess"], "trunk": ["backbone.trunk", "backbone.trunk.inner"],
              "region_head": ["roi_head.roi_pool", "roi_head.box_head"], "proposals": ["rpn"]}
    with PhaseTimer(model, phases, clock) as timer:
        timer.start()
        model(torch.zeros(1))
        totals = timer.totals_ms()
        assert "preprocess" in vars(model)  # wrapped on the instance while active
    assert totals == {"preprocess": 0.5, "trunk": 7.0, "region_head": 4.0}  # nested trunk once
    assert timer.found["proposals"] == []  # missing paths are skipped
    assert "preprocess" not in vars(model)  # method wrapper removed
    assert not model.backbone.trunk._forward_hooks and not model.backbone.trunk._forward_pre_hooks


def _check_result(res: dict, phases: tuple[str, ...], batch: int):
    assert set(res["phases_ms"]) == set(phases) | {"other"}
    for stats in (res["total_ms"], *res["phases_ms"].values()):
        assert set(stats) == {"median", "q1", "q3", "min", "max", "n"} and stats["n"] == TINY["repeats"]
        assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    for name in phases:
        assert res["phases_ms"][name]["min"] >= 0.0
    # On the CPU every phase lies inside the timed call, so per call the rest is >= 0.
    assert res["phases_ms"]["other"]["min"] >= -1e-6
    phase_sum = sum(res["phases_ms"][p]["median"] for p in phases)
    assert phase_sum <= res["total_ms"]["median"] * 1.05 + 0.5
    assert res["batch_size"] == batch
    assert math.isclose(res["images_per_s"], batch / (res["total_ms"]["median"] / 1000.0))
    assert res["peak_memory_mb"] > 0 and res["memory_kind"].startswith("rss")
    if res["memory_kind"] == "rss_peak_since_reset":  # the peak of the call cannot be below its start
        assert res["peak_memory_mb"] >= res["baseline_memory_mb"] - 1.0
    assert res["rois_per_image"] > 0


def test_faster_rcnn_compare_reports_both_models_and_the_ratio(tiny_faster):
    twin = build_torchvision_twin(tiny_faster, HW)
    out = benchmark_detectors({"detkit": (tiny_faster, DETKIT_PHASES), "torchvision": (twin, TORCHVISION_PHASES)},
                              **TINY)
    for name in ("detkit", "torchvision"):
        assert set(out[name]) == {"train", "infer_latency", "infer_throughput"}
        _check_result(out[name]["train"], TRAIN_PHASES, 2)
        _check_result(out[name]["infer_latency"], INFER_PHASES, 1)
        _check_result(out[name]["infer_throughput"], INFER_PHASES, 2)
        assert all(out[name]["train"]["phase_sources"][p] for p in TRAIN_PHASES)  # every phase hooked
        assert all(out[name]["infer_latency"]["phase_sources"][p] for p in INFER_PHASES)
        assert out[name]["infer_latency"]["detections_per_image"] >= 0
    r = ratios(out["detkit"], out["torchvision"])
    assert math.isclose(r["train_speedup"], out["detkit"]["train"]["images_per_s"]
                        / out["torchvision"]["train"]["images_per_s"])
    assert math.isclose(r["infer_latency_ratio"], out["detkit"]["infer_latency"]["total_ms"]["median"]
                        / out["torchvision"]["infer_latency"]["total_ms"]["median"])


def test_fast_rcnn_runs_on_given_proposals():
    torch.manual_seed(0)
    model = fast_rcnn(backbone=alexnet_backbone(width=0.125), num_classes=3)
    res = benchmark_detector(model, mode="infer", num_proposals=20, **{**TINY, "batch_size": 1})
    lat = res["infer_latency"]
    _check_result(lat, INFER_PHASES, 1)
    assert lat["phases_ms"]["proposals"]["max"] == 0.0  # given, not computed
    assert lat["rois_per_image"] == 20  # every given proposal went through the region head
    assert res["infer_throughput"] is lat  # batch 1: the same measurement
    with pytest.raises(BenchmarkError, match="Faster R-CNN"):
        build_torchvision_twin(model, HW)


@torch.no_grad()
def test_twin_computes_the_same_trunk_rpn_and_predictor(tiny_faster):
    model = tiny_faster.eval()
    twin = build_torchvision_twin(model, HW).eval()
    gen = torch.Generator().manual_seed(1)
    from detkit.analysis.benchmarking.benchmark import random_batch
    batch = random_batch(1, *HW, device=torch.device("cpu"), generator=gen)
    ours = model.backbone(model.preprocess(batch)[0])
    images, _ = twin.to_torchvision(batch, None)
    tv_images, _ = twin.model.transform(images)
    assert tv_images.image_sizes == [HW]  # no resizing
    theirs = twin.model.backbone(tv_images.tensors)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    # the same LRN function, computed by torch's own layer on torchvision's side
    lrns = [type(m) for m in twin.model.backbone.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert lrns and set(lrns) == {nn.LocalResponseNorm}
    assert all(type(m) is LocalResponseNorm for m in model.backbone.trunk.modules() if isinstance(m, nn.LocalResponseNorm))

    logits, deltas = model.rpn.head(ours)  # (1, T), (1, T, 4) detkit anchor order
    tv_logits, tv_deltas = twin.model.rpn.head([ours])
    a, (hf, wf) = model.rpn.head.num_anchors, ours.shape[-2:]
    perm = _anchor_permutation(3, 3)
    ours_by_cell = logits.view(hf, wf, a)[..., perm]  # reorder to torchvision's anchors
    torch.testing.assert_close(tv_logits[0][0].permute(1, 2, 0), ours_by_cell)
    tv_d = tv_deltas[0][0].view(a, 4, hf, wf).permute(2, 3, 0, 1)
    torch.testing.assert_close(tv_d, deltas.view(hf, wf, a, 4)[:, :, perm])

    feats = torch.randn(5, model.backbone.head_channels, generator=gen)
    cls, box = model.roi_head.predictor(feats)
    tv_cls, tv_box = twin.model.roi_heads.box_predictor(feats)
    torch.testing.assert_close(tv_cls, cls)
    torch.testing.assert_close(tv_box[:, 4:], box)
    assert torch.all(tv_box[:, :4] == 0)
    assert twin.model.rpn._post_nms_top_n["testing"] == model.rpn.post_nms_top_n[False]
    assert twin.model.roi_heads.box_roi_pool.output_size == (model.backbone.roi_size,) * 2


def test_bf16_channels_last_inference_runs():
    model = faster_rcnn(backbone=alexnet_backbone(width=0.125), num_classes=3, roi_pool_mode="align",
                        channels_last=True)
    res = benchmark_detector(model, mode="infer", precision="bf16", channels_last=True,
                             **{**TINY, "batch_size": 1, "repeats": 2})
    _check_result(res["infer_latency"], INFER_PHASES, 1)


def test_bad_settings_are_clear_errors(tiny_faster):
    with pytest.raises(BenchmarkError, match="precision"):
        benchmark_detector(tiny_faster, **{**TINY, "precision": "int8"})
    with pytest.raises(BenchmarkError, match="at least 32x32"):
        benchmark_detector(tiny_faster, **{**TINY, "input_hw": (16, 96)})
    with pytest.raises(BenchmarkError, match="mode"):
        benchmark_detector(tiny_faster, **{**TINY, "mode": "fast"})


def test_machine_and_commit_are_recorded():
    info = machine_info(torch.device("cpu"))
    assert info["cpu_cores"] >= 1 and info["torch"] == torch.__version__ and info["gpu"] is None
    assert info["torchvision"] and info["cpu"] is not None
    git = git_commit()
    if git["commit"] is None:
        pytest.skip("not a git checkout")
    assert len(git["commit"]) == 40 and int(git["commit"], 16) >= 0 and isinstance(git["dirty"], bool)
