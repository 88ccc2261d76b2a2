"""The separable RoI Align equals torchvision's roi_align (values and gradients), edge cases included,
and RoIPool takes it exactly when a CPU gradient is wanted."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from detkit.roi_heads import roi_pool as roi_pool_module
from detkit.roi_heads.roi_pool import RoIPool
from detkit.roi_heads.separable_roi_align import roi_align_separable


def _rois(gen, n_images, per_image, height, width, spread=1.3):
    """Random boxes in image pixels, some reaching past the image (up to ``spread`` times its size),
    some tiny, some inverted (x2 < x1: RoI Align with ``aligned=True`` takes them); image indices
    shuffled."""
    r = n_images * per_image
    xy = (torch.rand(r, 2, generator=gen) * spread - (spread - 1) / 2) * torch.tensor([width, height])
    wh = torch.rand(r, 2, generator=gen) * torch.tensor([width, height]) * 0.7
    wh[::5] = torch.rand(len(wh[::5]), 2, generator=gen) * 3  # smaller than a feature cell
    wh[1::7] *= -1
    idx = torch.arange(n_images).repeat_interleave(per_image)[torch.randperm(r, generator=gen)]
    return torch.cat([idx[:, None].float(), xy, xy + wh], 1)


@pytest.mark.parametrize("size,samples,scale", [(6, 2, 1 / 16), (7, 1, 1 / 16), (3, 3, 0.5), (2, 2, 1.0)])
def test_values_and_gradients_equal_torchvision(size, samples, scale):
    gen = torch.Generator().manual_seed(size * 10 + samples)
    feats = torch.randn(3, 5, 9, 11, generator=gen, dtype=torch.float64)
    h_img, w_img = 9 / scale, 11 / scale
    rois = _rois(gen, 3, 7, h_img, w_img).double()
    ref = roi_align(feats, rois, size, scale, sampling_ratio=samples, aligned=True)
    ours = roi_align_separable(feats, rois, size, scale, samples)
    assert ours.dtype == torch.float64  # float64 in, float64 math and out
    torch.testing.assert_close(ours, ref)
    in_float32 = roi_align_separable(feats.float(), rois.float(), size, scale, samples)
    torch.testing.assert_close(in_float32, ref.float(), atol=1e-5, rtol=1e-5)

    weight = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    a, b = feats.clone().requires_grad_(), feats.clone().requires_grad_()
    boxes = rois.clone().requires_grad_()
    (roi_align(a, rois, size, scale, sampling_ratio=samples, aligned=True) * weight).sum().backward()
    (roi_align_separable(b, boxes, size, scale, samples) * weight).sum().backward()
    torch.testing.assert_close(b.grad, a.grad)
    assert boxes.grad is None  # as torchvision: no gradient to the boxes


def test_images_without_regions_and_no_regions():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 4, 6, 6, generator=gen)
    rois = _rois(gen, 1, 5, 96, 96)
    rois[:, 0] = 2  # images 0 and 1 have none
    torch.testing.assert_close(roi_align_separable(feats, rois, 3, 1 / 16, 2),
                               roi_align(feats, rois, 3, 1 / 16, sampling_ratio=2, aligned=True))
    assert roi_align_separable(feats, rois[:0], 3, 1 / 16, 2).shape == (0, 4, 3, 3)
    with pytest.raises(ValueError, match="sampling_ratio must be positive"):
        roi_align_separable(feats, rois, 3, 1 / 16, 0)


def test_a_huge_or_infinite_coordinate_gives_zeros_not_nan():
    feats = torch.randn(1, 2, 5, 5)
    far = torch.tensor([[0.0, 8.0, 8.0, 1e9, 40.0]])  # every sample point past the map: zeros
    torch.testing.assert_close(roi_align_separable(feats, far, 2, 1 / 8, 2),
                               roi_align(feats, far, 2, 1 / 8, sampling_ratio=2, aligned=True))
    infinite = far.clone()
    infinite[0, 3] = float("inf")  # (torchvision's CPU kernel crashes on this one)
    assert torch.equal(roi_align_separable(feats, infinite, 2, 1 / 8, 2), torch.zeros(1, 2, 2, 2))


def test_roipool_uses_it_only_for_cpu_gradients(monkeypatch):
    calls = []
    real = roi_pool_module.roi_align_separable
    monkeypatch.setattr(roi_pool_module, "roi_align_separable", lambda *a: calls.append(1) or real(*a))
    pool = RoIPool(output_size=6, spatial_scale=1 / 16, mode="align")
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 10, 12, generator=gen)
    rois = _rois(gen, 2, 4, 160, 192)
    plain = pool(feats, rois)  # no gradient wanted: torchvision's kernel
    assert calls == []
    trained = pool(feats.requires_grad_(), rois)
    assert calls == [1]
    torch.testing.assert_close(trained, plain, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        pool(feats, rois)
    assert calls == [1]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --fast's bf16: pooled in float32 either way
        mixed = pool(feats.detach().bfloat16().requires_grad_(), rois)
    assert calls == [1, 1] and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, pool(feats.detach().bfloat16().float(), rois), atol=1e-5, rtol=1e-5)
    adaptive = RoIPool(output_size=6, spatial_scale=1 / 16, mode="align", sampling_ratio=-1)
    adaptive(feats, rois)  # a sample count per region: torchvision's kernel
    monkeypatch.setattr(roi_pool_module, "SEPARABLE_MAX_ELEMENTS", 10)  # too large a product: torchvision's
    pool(feats, rois)
    assert calls == [1, 1]
