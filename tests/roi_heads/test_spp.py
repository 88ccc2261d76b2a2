import pytest
import torch

from detkit.roi_heads.spp import SpatialPyramidPool, best_scale


def test_fixed_length_for_any_window_and_image_size():
    spp = SpatialPyramidPool()  # (6, 3, 2, 1), stride 16
    assert spp.num_bins == 50
    g = torch.Generator().manual_seed(0)
    for hf, wf in ((3, 5), (10, 7), (38, 50)):
        f = torch.randn(2, 8, hf, wf, generator=g)
        h, w = 16 * hf, 16 * wf
        boxes = [torch.tensor([[0.0, 0.0, w, h], [5.0, 5.0, 12.0, 9.0]]),        # whole / < 1 cell
                 torch.tensor([[w / 2, h / 3, w + 40.0, h + 40.0], [1.0, 2.0, 40.0, 20.0], [3.0, 3.0, 50.0, 70.0]])]
        out = spp(f, boxes)
        assert out.shape == (5, 8 * 50)
        assert torch.isfinite(out).all()


def test_levels_by_hand():
    f = torch.randn(1, 3, 8, 10, generator=torch.Generator().manual_seed(1))
    spp = SpatialPyramidPool(levels=(6, 3, 2, 1), spatial_scale=1 / 16)
    # Window (32, 16)-(96, 80): corners round to cells x 2..6, y 1..5; the 1 x 1 level (last C
    # entries) is the max over that window of the feature map.
    out = spp(f, [torch.tensor([[32.0, 16.0, 96.0, 80.0]])])
    assert out.shape == (1, 150)
    torch.testing.assert_close(out[0, -3:], f[0, :, 1:6, 2:7].amax(dim=(1, 2)))
    # Window (0, 0)-(48, 48): cells 0..3, so the 2 x 2 level holds the max of each 2 x 2 quadrant.
    two = SpatialPyramidPool(levels=(2,))(f, [torch.tensor([[0.0, 0.0, 48.0, 48.0]])]).view(3, 2, 2)
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(two[:, i, j], f[0, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].amax(dim=(1, 2)))
    # A window inside one cell: every one of the 50 bins is that cell (no empty bins).
    tiny = spp(f, [torch.tensor([[17.0, 17.0, 20.0, 20.0]])])
    torch.testing.assert_close(tiny[0, -3:], f[0, :, 1, 1])
    assert (tiny.view(-1)[:108].view(3, 36) == f[0, :, 1, 1][:, None]).all()


def test_best_scale_hand_worked():
    # Image 400 x 600 (shorter side 400): factors 1.2, 1.44, 1.72, 2.16, 3.0.
    scales = (480, 576, 688, 864, 1200)
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0],   # sides 120 144 172 216 300 -> 216^2 closest
                          [0.0, 0.0, 200.0, 200.0],   # 240^2 = 57600 closest to 50176
                          [0.0, 0.0, 10.0, 10.0],     # tiny: largest scale
                          [0.0, 0.0, 150.0, 40.0]])   # area 6000: 54000 at 3.0 vs 27994 at 2.16
    assert best_scale(boxes, scales, image_size=(400, 600)).tolist() == [3, 0, 4, 4]
    assert best_scale(torch.tensor([[0.0, 0.0, 112.0, 112.0]]), (1.0, 2.0)).tolist() == [1]
    with pytest.raises(ValueError, match="^best_scale: "):
        best_scale(boxes, (0.0, 1.0))


def test_forward_multiscale_pools_each_box_at_its_scale():
    g = torch.Generator().manual_seed(2)
    spp = SpatialPyramidPool(levels=(2, 1), spatial_scale=1 / 16)
    feats = [torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 12, 12, generator=g)]
    factors = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    rois = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 90.0, 90.0]]),
            torch.tensor([[8.0, 8.0, 60.0, 40.0]])]
    out = spp.forward_multiscale(feats, rois, factors, target=64.0)
    assert out.shape == (3, 4 * 5)
    # 30 px box: area 900 (x1) / 3600 (x2) -> scale 1 is closer to 64^2; 90 px box -> scale 0.
    torch.testing.assert_close(out[0], spp(feats[1], torch.tensor([[0.0, 0.0, 0.0, 60.0, 60.0]]))[0])
    torch.testing.assert_close(out[1], spp(feats[0], torch.tensor([[0.0, 0.0, 0.0, 90.0, 90.0]]))[0])
    # 52 x 32 box: |1664 - 4096| = 2432 at x1 < |6656 - 4096| = 2560 at x2 -> scale 0.
    torch.testing.assert_close(out[2], spp(feats[0], torch.tensor([[1.0, 8.0, 8.0, 60.0, 40.0]]))[0])


def test_bad_input():
    with pytest.raises(ValueError, match="^SpatialPyramidPool: "):
        SpatialPyramidPool(levels=())
    with pytest.raises(ValueError, match="^SpatialPyramidPool: "):
        SpatialPyramidPool()(torch.zeros(3, 4, 4), [torch.zeros(1, 4)])
    with pytest.raises(ValueError, match="^SpatialPyramidPool: "):
        SpatialPyramidPool().forward_multiscale([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 4)],
                                                torch.ones(1, 2))


def test_runs_under_cpu_bf16_autocast():
    # torchvision's CPU roi_pool has no bf16 kernel: SPPNet trained with amp=bf16 (preset=cpu on a
    # CPU with AVX512-BF16) used to fail with "roi_pool_forward_kernel not implemented for BFloat16".
    spp = SpatialPyramidPool(levels=(2, 1), spatial_scale=1 / 8)
    features = torch.randn(1, 4, 8, 8)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 48.0, 40.0]])]
    expected = spp(features, boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = spp(features.bfloat16(), boxes)
    assert got.shape == (2, 4 * 5)
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)
    # multi-scale pooling (SPPNet's training path) too
    factors = torch.tensor([[1.0, 0.5]])
    maps = [features, features[:, :, :4, :4]]
    expected = spp.forward_multiscale(maps, [boxes[0]], factors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = spp.forward_multiscale([m.bfloat16() for m in maps], [boxes[0]], factors)
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)
