import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from detkit.ops.box_coder import BoxCoder
from detkit.roi_heads.box_predictor import FastRCNNPredictor
from detkit.roi_heads.fast_rcnn import FastRCNNHead, fast_rcnn_loss
from detkit.roi_heads.roi_pool import RoIPool

GT = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


def _head(num_classes=3, **kwargs):
    box_head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 2 * 2, 8), nn.ReLU())
    return FastRCNNHead(roi_pool=RoIPool(output_size=2, spatial_scale=1 / 16), box_head=box_head,
                        predictor=FastRCNNPredictor(in_channels=8, num_classes=num_classes), **kwargs)


def _shifted(shifts):
    """Copies of GT shifted right: IoU = (100 - s) / (100 + s)."""
    s = torch.as_tensor(shifts, dtype=torch.float32)[:, None]
    return GT + torch.cat((s, torch.zeros_like(s), s, torch.zeros_like(s)), 1)


FG = _shifted(torch.linspace(1, 15, 100))     # IoU 0.74 .. 0.98
BG = _shifted(torch.linspace(40, 75, 200))    # IoU 0.14 .. 0.43
FAR = _shifted(torch.linspace(85, 200, 50))   # IoU < 0.09


def _sample(head, proposals, gt=GT, valid=None):
    p = proposals[None]
    pv = torch.ones(p.shape[:2], dtype=torch.bool) if valid is None else valid[None]
    return head.sample(p, pv, gt[None], torch.ones(1, gt.shape[0], dtype=torch.int64), torch.ones(1, gt.shape[0], dtype=torch.bool))


def test_quarter_foreground_and_background_band():
    head = _head()
    rois, cls, targets, valid = _sample(head, torch.cat((FG, BG, FAR)))
    assert rois.shape == (1, 64, 4) and bool(valid.all())
    fg = cls[0] > 0
    assert int(fg.sum()) == 16 and (cls[0][fg] == 2).all()  # gt label 1 -> logit index 2
    iou = box_iou(rois[0], GT)[:, 0]
    assert (iou[fg] >= 0.5).all()
    assert ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all()  # never from FAR
    expected = BoxCoder((10, 10, 5, 5)).encode(GT.expand(16, 4), rois[0][fg])
    assert torch.allclose(targets[0][fg], expected) and (targets[0][~fg] == 0).all()


def test_gt_appended_to_proposals():
    rois, cls, _, valid = _sample(_head(), BG)
    assert int((cls > 0).sum()) == 1 and torch.equal(rois[0][cls[0] > 0], GT)
    assert int(valid.sum()) == 64  # background fills the places foreground leaves: 1 + 63
    _, cls, _, _ = _sample(_head(append_gt_boxes=False), BG)
    assert int((cls > 0).sum()) == 0


def test_low_background_threshold_configurable_and_padding_ignored():
    _, cls, _, valid = _sample(_head(), FAR)
    assert int(valid.sum()) == 1 and int(cls.sum()) == 2  # only the appended gt
    _, cls, _, valid = _sample(_head(bg_iou_thresh_lo=0.0), FAR)
    assert int(valid.sum()) == 51 and int((cls > 0).sum()) == 1  # torchvision's [0, 0.5)
    pad = torch.zeros(len(BG), dtype=torch.bool)
    _, _, _, valid = _sample(_head(), BG, valid=pad)
    assert int(valid.sum()) == 1


def test_image_without_objects_gives_background_only():
    head = _head()
    p = torch.cat((FG, BG))[None]
    pv = torch.ones(p.shape[:2], dtype=torch.bool)
    for g in (0, 1):  # no slots at all, or one padded slot
        rois, cls, targets, valid = head.sample(p, pv, torch.zeros(1, g, 4), torch.zeros(1, g, dtype=torch.int64),
                                                torch.zeros(1, g, dtype=torch.bool))
        assert bool(valid.all()) and int(cls.abs().sum()) == 0 and (targets == 0).all()


def test_loss_values_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    deltas = torch.tensor([[0.5, 0.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0], [9.0] * 8, [9.0] * 8])
    labels = torch.tensor([1, 0, 2])
    targets = torch.zeros(3, 4)
    valid = torch.tensor([True, True, False])
    cls, box = fast_rcnn_loss(logits, deltas, labels, targets, valid)
    expected_cls = (math.log(3) + math.log(1 + 2 * math.exp(-2))) / 2
    assert math.isclose(cls.item(), expected_cls, rel_tol=1e-6)
    # Only class 0's deltas of the foreground RoI count: 0.5 * 0.5**2, averaged over 2 RoIs.
    assert math.isclose(box.item(), 0.125 / 2, rel_tol=1e-6)
    _, box2 = fast_rcnn_loss(logits, deltas, labels, targets, valid, box_weight=2.0)
    assert math.isclose(box2.item(), 0.125, rel_tol=1e-6)


def test_postprocess_per_class_nms_threshold_clip():
    head = _head(num_classes=2).eval()
    # Packed RoIs (image index, box): three of image 0, none of image 1.
    rois = torch.tensor([[0.0, 10, 10, 50, 50], [0, 12, 10, 52, 50], [0, 100, 100, 150, 150]])
    logits = torch.tensor([[0.0, 4, 4], [0, 3, 3], [5, -5, -5]])
    hw = torch.tensor([[40, 45], [40, 40]])
    out = head.postprocess(logits, torch.zeros(3, 8), rois, hw)
    assert len(out) == 2
    first = out[0]
    p = math.exp(4) / (1 + 2 * math.exp(4))
    # p1 overlaps p0 (IoU 0.9) in each class: suppressed per class, but p0 is kept for both classes.
    assert sorted(first["labels"].tolist()) == [0, 1]
    assert torch.allclose(first["scores"], torch.tensor([p, p]))
    assert first["boxes"].tolist() == [[10.0, 10.0, 45.0, 40.0]] * 2  # clipped to w=45, h=40
    assert out[1]["boxes"].shape == (0, 4) and out[1]["labels"].dtype == torch.int64
    capped = _head(num_classes=2, detections_per_img=1).eval()
    assert len(capped.postprocess(logits, torch.zeros(3, 8), rois, hw)[0]["scores"]) == 1


def test_forward_train_and_eval_shapes():
    torch.manual_seed(0)
    head = _head()
    features = torch.randn(2, 4, 8, 8)
    proposals = torch.cat((FG[:10], BG[:10]))[None].expand(2, -1, -1).contiguous()
    pv = torch.ones(2, 20, dtype=torch.bool)
    hw = torch.tensor([[128, 128], [128, 128]])
    losses = head(features, proposals, pv, hw, GT[None].expand(2, 1, 4), torch.ones(2, 1, dtype=torch.int64),
                  torch.ones(2, 1, dtype=torch.bool))
    assert set(losses) == {"roi_cls", "roi_box"} and all(torch.isfinite(v) for v in losses.values())
    # Initial scores are near uniform over K + 1 = 4 classes.
    assert abs(losses["roi_cls"].item() - math.log(4)) < 0.05
    out = head.eval()(features, proposals, pv, hw)
    assert len(out) == 2 and all(o["labels"].max() < 3 for o in out if len(o["labels"]))
    with pytest.raises(ValueError, match="^FastRCNNHead: "):
        head.train()(features, proposals, pv, hw)
