import pytest
import torch
from torchvision.ops import box_iou

from detkit.ops.matcher import Matcher, batched_box_iou


def test_batched_iou_equals_torchvision_per_image():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 7, 2, generator=gen) * 50
    a = torch.cat((xy, xy + torch.rand(2, 7, 2, generator=gen) * 30 + 1), -1)
    xy = torch.rand(2, 11, 2, generator=gen) * 50
    b = torch.cat((xy, xy + torch.rand(2, 11, 2, generator=gen) * 30 + 1), -1)
    out = batched_box_iou(a, b)
    assert out.shape == (2, 7, 11)
    for i in range(2):
        assert torch.allclose(out[i], box_iou(a[i], b[i]), atol=1e-6)


def _rpn_case():
    gts = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]]])
    anchors = torch.tensor([[
        [0.0, 0.0, 10.0, 10.0],    # IoU 1 with gt 0      -> positive
        [0.0, 0.0, 10.0, 5.0],     # IoU 0.5 with gt 0    -> between 0.3 and 0.7: ignored
        [0.0, 0.0, 10.0, 2.0],     # IoU 0.2              -> negative
        [20.0, 20.0, 30.0, 30.0],  # IoU 0                -> negative
        [40.0, 40.0, 50.0, 45.0],  # IoU 0.5 with gt 1, its best anchor -> low-quality positive
    ]])
    return gts, anchors


def test_hand_worked_iou_matrix():
    gts, anchors = _rpn_case()
    expected = torch.tensor([[1.0, 0.5, 0.2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.5]])
    assert torch.allclose(batched_box_iou(gts, anchors)[0], expected)


def test_thresholds_and_low_quality_matches():
    gts, anchors = _rpn_case()
    iou = batched_box_iou(gts, anchors)
    strict = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1))
    _, labels = strict(iou)
    assert labels[0].tolist() == [1, -1, 0, 0, -1]
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    matches, labels = matcher(iou)
    assert labels[0].tolist() == [1, -1, 0, 0, 1]
    assert matches[0, 0] == 0 and matches[0, 4] == 1


def test_invalid_gt_gets_no_match():
    gts, anchors = _rpn_case()
    iou = batched_box_iou(gts, anchors)
    iou[:, 1] = -1.0  # gt 1 is padding
    matcher = Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)
    _, labels = matcher(iou)
    assert labels[0].tolist() == [1, -1, 0, 0, 0]
    _, labels = matcher(torch.full((1, 1, 5), -1.0))  # an image without objects
    assert labels[0].tolist() == [0, 0, 0, 0, 0]


def test_fast_rcnn_bands_lower_bound_inclusive():
    matcher = Matcher(thresholds=(0.1, 0.5), labels=(-1, 0, 1))
    iou = torch.tensor([[[0.05, 0.1, 0.49, 0.5, 0.9]]])
    _, labels = matcher(iou)
    assert labels[0].tolist() == [-1, 0, 0, 1, 1]


def test_bad_configuration():
    with pytest.raises(ValueError, match="^Matcher: "):
        Matcher(thresholds=(0.7, 0.3), labels=(0, -1, 1))
    with pytest.raises(ValueError, match="^Matcher: "):
        Matcher(thresholds=(0.3,), labels=(0, -1, 1))
