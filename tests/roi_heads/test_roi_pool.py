import pytest
import torch

from detkit.roi_heads.roi_pool import RoIPool


def _features():
    f = torch.arange(2 * 64, dtype=torch.float32).view(2, 1, 8, 8)
    return f


def test_max_pooling_by_hand():
    # Box (0, 0)-(3, 3) at scale 1 covers cells 0..3: 2 x 2 bins of 2 x 2 cells; max = bottom-right.
    pool = RoIPool(output_size=2, spatial_scale=1.0)
    out = pool(_features(), [torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.zeros(0, 4)])
    assert out.shape == (1, 1, 2, 2)
    assert out[0, 0].tolist() == [[9.0, 11.0], [25.0, 27.0]]  # f[y, x] = 8 y + x


def test_spatial_scale_and_batch_index():
    # Same cells through stride 2: image pixels (0, 0)-(6, 6) -> cells 0..3; from image 1 (+64).
    pool = RoIPool(output_size=2, spatial_scale=0.5)
    rows = torch.tensor([[1.0, 0.0, 0.0, 6.0, 6.0]])
    assert pool(_features(), rows)[0, 0].tolist() == [[73.0, 75.0], [89.0, 91.0]]


def test_input_forms_agree():
    pool = RoIPool(output_size=3, spatial_scale=0.5)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 8.0], [2.0, 4.0, 14.0, 14.0]],
                          [[1.0, 1.0, 9.0, 15.0], [0.0, 0.0, 15.0, 15.0]]])
    padded = pool(_features(), boxes)
    listed = pool(_features(), list(boxes))
    rows = torch.cat((torch.tensor([0.0, 0, 1, 1])[:, None], boxes.reshape(-1, 4)), 1)
    assert torch.equal(padded, listed) and torch.equal(padded, pool(_features(), rows))


def test_align_mode_on_constant_map():
    pool = RoIPool(output_size=4, spatial_scale=1 / 16, mode="align")
    out = pool(torch.full((1, 3, 10, 10), 2.5), [torch.tensor([[16.0, 16.0, 100.0, 90.0]])])
    assert out.shape == (1, 3, 4, 4) and torch.allclose(out, torch.tensor(2.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="^RoIPool: "):
        RoIPool(output_size=7, spatial_scale=1 / 16, mode="warp")
    with pytest.raises(ValueError, match="^RoIPool: "):
        RoIPool(output_size=2, spatial_scale=1.0)(_features(), torch.zeros(3, 3))


def test_pool_and_align_run_under_cpu_bf16_autocast():
    # torchvision's CPU autocast has no rule for roi_pool: mixed bf16 features / float32 boxes
    # used to fail with "input should have the same type as rois".
    import torch

    from detkit.roi_heads.roi_pool import RoIPool

    features = torch.randn(1, 4, 8, 8)
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 48.0, 40.0]])]
    for mode in ("pool", "align"):
        op = RoIPool(output_size=2, spatial_scale=1 / 8, mode=mode)
        expected = op(features, boxes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = op(features.bfloat16(), boxes)
        assert got.shape == (2, 4, 2, 2)
        torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.05)
