import math

import pytest
import torch

from detkit.proposals.anchors import AnchorGenerator
from detkit.proposals.rpn import RegionProposalNetwork, RPNHead, rpn_loss


def _rpn(sizes=(64,), ratios=(1.0,), channels=8, **kwargs):
    gen = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=16)
    head = RPNHead(in_channels=channels, channels=16, num_anchors=gen.num_anchors)
    return RegionProposalNetwork(head=head, anchor_generator=gen, **kwargs)


def test_head_shapes_follow_anchor_order():
    head = RPNHead(in_channels=4, channels=8, num_anchors=9)
    logits, deltas = head(torch.randn(2, 4, 3, 5))
    assert logits.shape == (2, 3 * 5 * 9) and deltas.shape == (2, 3 * 5 * 9, 4)
    # Anchor index (i * Wf + j) * A + a must read the conv output at (a, i, j).
    x = torch.randn(1, 4, 3, 5)
    raw = head.objectness(torch.relu(head.conv(x)))
    assert torch.allclose(head(x)[0][0, (2 * 5 + 4) * 9 + 7], raw[0, 7, 2, 4])


def test_cross_boundary_anchors_ignored_per_image_size():
    rpn = _rpn()
    anchors = rpn.anchor_generator((8, 8))  # covers a 128 x 128 padded batch
    image_hw = torch.tensor([[128, 128], [80, 128]])  # image 1 is shorter than the padding
    gt = torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 1.0]]])
    _, labels = rpn.assign_targets(anchors, image_hw, gt, torch.ones(2, 1, dtype=torch.bool))
    inside0 = (anchors[:, :2] >= 0).all(1) & (anchors[:, 2:] <= 128).all(1)
    inside1 = inside0 & (anchors[:, 3] <= 80)
    assert (labels[0][~inside0] == -1).all() and (labels[0][inside0] != -1).all()
    assert (labels[1][~inside1] == -1).all() and (labels[1][inside1] != -1).all()
    assert inside1.sum() < inside0.sum()


def test_gt_equal_to_anchor_makes_it_positive():
    rpn = _rpn()
    anchors = rpn.anchor_generator((8, 8))
    k = (3 * 8 + 4)  # cell (3, 4), the only anchor there: centre (72, 56), 64 x 64
    gt = anchors[k].clone().view(1, 1, 4)
    assert gt.tolist() == [[[40.0, 24.0, 104.0, 88.0]]]
    matches, labels = rpn.assign_targets(anchors, torch.tensor([[128, 128]]), gt,
                                         torch.ones(1, 1, dtype=torch.bool))
    assert labels[0, k] == 1 and matches[0, k] == 0
    assert int((labels[0] == 1).sum()) == 1  # neighbours overlap 48/80 = 0.6: not >= 0.7


def test_nms_removes_duplicates_and_keeps_order():
    rpn = _rpn(post_nms_top_n_test=4).eval()
    anchors = torch.tensor([[10.0, 10, 50, 50], [10, 10, 50, 50], [11, 10, 51, 50], [100, 100, 140, 140]])
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    boxes, valid = rpn.propose(anchors, logits, torch.zeros(1, 4, 4), torch.tensor([[200, 200]]))
    assert valid[0].tolist() == [True, True, False, False]
    assert boxes[0, :2].tolist() == [[10, 10, 50, 50], [100, 100, 140, 140]]


def test_proposals_inside_each_image_and_capped():
    torch.manual_seed(0)
    rpn = _rpn(sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0), post_nms_top_n_test=20).eval()
    nn_init = torch.nn.init
    nn_init.normal_(rpn.head.deltas.weight, std=0.5)  # large random deltas: boxes leave the image
    image_hw = torch.tensor([[128, 160], [70, 90]])
    with torch.no_grad():
        boxes, valid, losses = rpn(torch.randn(2, 8, 8, 10), image_hw)
    assert losses == {} and boxes.shape == (2, 20, 4) and valid.sum(1).tolist() == [20, 20]
    for i, (h, w) in enumerate(image_hw.tolist()):
        b = boxes[i][valid[i]]
        assert (b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()


def test_rpn_loss_hand_value():
    logits = torch.tensor([[0.0, 0.0, 5.0]])
    positive = torch.tensor([[True, False, False]])
    valid = torch.tensor([[True, True, False]])
    obj, box = rpn_loss(logits, torch.zeros(1, 3, 4), positive, valid, torch.ones(1, 3, 4), beta=1 / 9)
    assert math.isclose(obj.item(), math.log(2), rel_tol=1e-6)
    # smooth-L1(1) = 1 - beta / 2 per coordinate, 4 coordinates, over 2 sampled anchors.
    assert math.isclose(box.item(), 4 * (1 - 1 / 18) / 2, rel_tol=1e-6)


def test_losses_finite_and_decrease():
    torch.manual_seed(0)
    rpn = _rpn(sizes=(32, 64), ratios=(0.5, 1.0, 2.0), batch_size_per_image=64).train()
    features = torch.randn(2, 8, 8, 8)
    image_hw = torch.tensor([[128, 128], [112, 128]])
    gt = torch.tensor([[[20.0, 30.0, 70.0, 80.0], [60.0, 60.0, 120.0, 100.0]],
                       [[10.0, 10.0, 50.0, 40.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_valid = torch.tensor([[True, True], [True, False]])
    opt = torch.optim.SGD(rpn.parameters(), lr=0.05, momentum=0.9)
    totals = []
    for _ in range(25):
        _, _, losses = rpn(features, image_hw, gt, gt_valid)
        assert set(losses) == {"rpn_objectness", "rpn_box"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3])


def test_training_needs_ground_truth_and_matching_anchor_count():
    rpn = _rpn().train()
    with pytest.raises(ValueError, match="^RegionProposalNetwork: "):
        rpn(torch.randn(1, 8, 4, 4), torch.tensor([[64, 64]]))
    with pytest.raises(ValueError, match="^RegionProposalNetwork: "):
        RegionProposalNetwork(head=RPNHead(in_channels=8, num_anchors=3), anchor_generator=AnchorGenerator())
