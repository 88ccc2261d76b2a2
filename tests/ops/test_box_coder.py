import math

import pytest
import torch

from detkit.ops.box_coder import BoxCoder, clip_boxes


def _random_boxes(n, gen):
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
    gen = torch.Generator().manual_seed(0)
    coder = BoxCoder(weights)
    boxes, ref = _random_boxes(50, gen), _random_boxes(50, gen)
    assert torch.allclose(coder.decode(coder.encode(boxes, ref), ref), boxes, atol=1e-4)


def test_hand_worked_delta():
    # reference: centre (5, 5), 10 x 10; target: centre (12, 9), 20 x 10.
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[2.0, 4.0, 22.0, 14.0]])
    plain = BoxCoder().encode(gt, ref)
    assert torch.allclose(plain, torch.tensor([[0.7, 0.4, math.log(2.0), 0.0]]))
    # Fast R-CNN normalisation: std (0.1, 0.1, 0.2, 0.2) == weights (10, 10, 5, 5).
    normalised = BoxCoder((10, 10, 5, 5)).encode(gt, ref)
    assert torch.allclose(normalised, torch.tensor([[7.0, 4.0, 5 * math.log(2.0), 0.0]]))


def test_decode_broadcasts_class_specific_deltas():
    coder = BoxCoder((10, 10, 5, 5))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]]])  # (R=1, K=2, 4)
    out = coder.decode(deltas, ref[:, None, :])
    assert out.shape == (1, 2, 4)
    assert torch.allclose(out[0, 0], ref[0])
    assert torch.allclose(out[0, 1], torch.tensor([10.0, 0.0, 20.0, 10.0]))  # shifted by one width


def test_decode_clamps_log_scale():
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0, 2] - out[0, 0], torch.tensor(1000.0))  # 16 * 1000 / 16


def test_clip_boxes_per_image():
    boxes = torch.tensor([[[-5.0, -5.0, 50.0, 50.0]], [[-5.0, -5.0, 50.0, 50.0]]])
    hw = torch.tensor([[40, 30], [20, 60]])
    out = clip_boxes(boxes, hw)
    assert out[0, 0].tolist() == [0.0, 0.0, 30.0, 40.0]
    assert out[1, 0].tolist() == [0.0, 0.0, 50.0, 20.0]


def test_bad_weights():
    with pytest.raises(ValueError, match="^BoxCoder: "):
        BoxCoder((1.0, 1.0, 0.0, 1.0))
