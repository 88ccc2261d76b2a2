"""Warped-region batches sized to a memory budget (detkit.rcnn.region_batches) and R-CNN's use of them."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from detkit.backbones.alexnet import alexnet_backbone
from detkit.data.batch import ImageBatch
from detkit.methods.rcnn import RCNN
from detkit.rcnn.region_batches import (CPU_MEMORY_MB, GPU_MEMORY_MB, default_memory_mb, peak_bytes_per_region,
                                        region_spans, regions_per_batch)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(0, 9), max_size=6), batch=st.integers(1, 7))
def test_spans_cover_every_region_once_in_order(counts, batch):
    batches = list(region_spans(counts, batch))
    flat = [(i, j) for spans in batches for i, s, e in spans for j in range(s, e)]
    assert flat == [(i, j) for i, c in enumerate(counts) for j in range(c)]
    sizes = [sum(e - s for _, s, e in spans) for spans in batches]
    assert all(n == batch for n in sizes[:-1]) and all(0 < n <= batch for n in sizes)
    for spans in batches:  # consecutive images, non-empty slices
        images = [i for i, _, _ in spans]
        assert images == sorted(set(images)) and all(e > s for _, s, e in spans)


def test_spans_reject_an_empty_batch():
    with pytest.raises(ValueError, match="batch must be >= 1"):
        list(region_spans([3], 0))


def test_peak_is_the_input_plus_the_largest_layer():
    s = 10  # one 3x10x10 region: conv 3->8 keeps in (300) + out (800) floats; the in-place ReLU one map
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 2, 3, padding=1),
                        nn.BatchNorm2d(2))
    assert peak_bytes_per_region(net, input_size=s) == 4 * (3 * s * s + (3 + 8) * s * s)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # measured in float32 all the same
        assert peak_bytes_per_region(net, input_size=s) == 4 * (3 * s * s + (3 + 8) * s * s)
    wide = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1))
    assert peak_bytes_per_region(wide, input_size=s) == 4 * (3 * s * s + (8 + 16) * s * s)


def test_peak_measurement_leaves_modes_and_statistics_alone():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    net.train()
    net[0].eval()
    mean = net[1].running_mean.clone()
    peak_bytes_per_region(net, input_size=8)
    assert net.training and net[1].training and net[2].training and not net[0].training
    assert torch.equal(net[1].running_mean, mean) and int(net[1].num_batches_tracked) == 0


def test_regions_per_batch():
    assert regions_per_batch(2 ** 20, 512) == 512
    assert regions_per_batch(3 * 2 ** 20, 512) == 170
    assert regions_per_batch(2 ** 30, 1) == 1  # at least one region
    for bad in ({"bytes_per_region": 0, "memory_mb": 1}, {"bytes_per_region": 1, "memory_mb": 0}):
        with pytest.raises(ValueError):
            regions_per_batch(**bad)


def test_default_budget_is_small_on_a_cpu():
    assert default_memory_mb("cpu") == CPU_MEMORY_MB < default_memory_mb("cuda") == GPU_MEMORY_MB
    assert default_memory_mb(torch.device("cuda", 1)) == GPU_MEMORY_MB


@pytest.fixture(scope="module")
def two_images():
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), torch.randint(0, 256, (3, 80, 64), dtype=torch.uint8),
              torch.randint(0, 256, (3, 50, 50), dtype=torch.uint8)]
    batch = ImageBatch.from_images(images)
    props = [torch.tensor([[0, 0, 30, 30], [2, 1, 33, 29], [40, 10, 90, 60], [10, 20, 50, 63.]]),
             torch.zeros(0, 4),
             torch.tensor([[5, 5, 40, 40], [0, 0, 50, 50.], [20, 10, 45, 35]])]
    return batch, props


def _features(model, batch, props):
    images, hw = model.preprocess(batch)
    seen = []
    hook = model.backbone.trunk.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        fc, pool = model.region_features(images, hw, props, pool=True)
    finally:
        hook.remove()
    return fc, pool, seen


def test_rcnn_batches_regions_to_the_budget_across_images(two_images):
    batch, props = two_images
    torch.manual_seed(0)
    model = RCNN(backbone=alexnet_backbone(width=0.125, norm="bn"), num_classes=2).eval()
    per_region = peak_bytes_per_region(model.network(), input_size=model.input_size)
    assert model.regions_per_batch(torch.device("cpu")) == CPU_MEMORY_MB * 2 ** 20 // per_region  # measured here
    fc_all, pool_all, seen = _features(model, batch, props)  # 64 MB: every region in one pass
    assert seen == [7]
    model.region_memory_mb = 3.5 * per_region / 2 ** 20  # three regions per pass
    assert model.regions_per_batch(torch.device("cpu")) == 3
    fc, pool, seen = _features(model, batch, props)
    assert seen == [3, 3, 1]  # the second pass takes image 0's last region and image 2's first two
    torch.testing.assert_close(fc, fc_all, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pool, pool_all, rtol=1e-4, atol=1e-5)
    model.chunk_size = 2  # a fixed count overrides the budget
    assert _features(model, batch, props)[2] == [2, 2, 2, 1]


def test_rcnn_fine_tunes_in_one_pass(two_images):
    batch, props = two_images
    model = RCNN(backbone=alexnet_backbone(width=0.125, norm="bn"), num_classes=2, chunk_size=1).train()
    assert _features(model, batch, props)[2] == [7]  # batch norm sees the step's regions together
    with torch.no_grad():
        assert _features(model, batch, props)[2] == [1] * 7


def test_rcnn_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="RCNN: region_memory_mb"):
        RCNN(backbone=alexnet_backbone(width=0.125), num_classes=2, region_memory_mb=0)
