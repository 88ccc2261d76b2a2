"""The class-specific box regression network on the pooled maps."""
import pytest
import torch

from detkit.overfeat.box_regression import BoxRegressionNet, select_class_deltas


def test_shapes_follow_the_classifier_window():
    reg = BoxRegressionNet(in_channels=8, window=3, num_classes=5, channels=(16, 4))
    out = reg(torch.randn(2, 8, 7, 9))
    assert out.shape == (2, 20, 5, 7)  # 4 per class, one output per 3x3 window of P


def test_encode_decode_roundtrip_per_class():
    reg = BoxRegressionNet(in_channels=4, window=2, num_classes=3, channels=(8,))
    windows = torch.tensor([[[0.0, 0, 100, 100], [50.0, 20, 150, 120]]])   # (N=1, M=2, 4)
    gt = torch.tensor([[[10.0, 5, 60, 90], [40.0, 30, 170, 100]]])
    t = reg.encode(gt, windows)                                            # (1, 2, 4)
    # class 1 holds the true deltas, the others garbage: decode picks per class
    deltas = torch.randn(1, 2, 3, 4)
    deltas[:, :, 1] = t
    boxes = reg.decode(deltas.reshape(1, 2, 12), windows)
    assert boxes.shape == (1, 2, 3, 4)
    torch.testing.assert_close(boxes[:, :, 1], gt, atol=1e-4, rtol=1e-5)
    # R-CNN coding with weights (10, 10, 5, 5), by hand for the first pair
    assert t[0, 0, 0].item() == pytest.approx(10 * (35 - 50) / 100)
    assert t[0, 0, 2].item() == pytest.approx(5 * torch.log(torch.tensor(50 / 100)).item())


def test_select_class_deltas():
    d = torch.arange(24.0).view(2, 12)
    out = select_class_deltas(d, torch.tensor([2, 0]))
    assert out.tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="^BoxRegressionNet: "):
        BoxRegressionNet(in_channels=4, window=2, num_classes=0, channels=(8,))
    with pytest.raises(ValueError, match="^BoxRegressionNet: "):
        BoxRegressionNet(in_channels=4, window=2, num_classes=2, channels=())
