"""Fine-tuning labels of R-CNN (IoU >= 0.5 object, the rest background) and SPPNet (background only
for IoU in [0.1, 0.5); below 0.1 left out), on hand-made boxes."""
import pytest
import torch

from detkit.backbones.alexnet import alexnet_backbone
from detkit.data.batch import ImageBatch
from detkit.methods.rcnn import RCNN
from detkit.methods.sppnet import SPPNet

GT = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])  # (N=1, G=1, 4), area 100
# IoU with GT (area 100): 6/100 = 0.6, 3/100 = 0.3, 5/100 = 0.05, disjoint = 0
PROPS = [torch.tensor([[0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 5.0, 1.0], [20.0, 20.0, 30.0, 30.0]])]


def _models():
    torch.manual_seed(0)
    rcnn = RCNN(backbone=alexnet_backbone(width=0.125), num_classes=2)
    spp = SPPNet(backbone=alexnet_backbone(width=0.125), num_classes=2, scales=None, bg_iou_thresh_lo=0.1)
    return rcnn, spp


def test_labels_by_iou_rcnn_keeps_all_sppnet_drops_below_0_1():
    rcnn, spp = _models()
    args = (PROPS, GT, torch.tensor([[1]]), torch.tensor([[True]]))
    boxes_r, labels_r = rcnn.label_regions(*args)
    boxes_s, labels_s = spp.label_regions(*args)
    # regions: the ground truth itself, then the proposals in order; K = 2 is background
    assert labels_r[0].tolist() == [1, 1, 2, 2, 2]
    assert labels_s[0].tolist() == [1, 1, 2, -1, -1]
    torch.testing.assert_close(boxes_r[0], torch.cat((GT[0], PROPS[0])))


def test_image_without_ground_truth():
    rcnn, spp = _models()
    args = (PROPS, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.bool))
    assert rcnn.label_regions(*args)[1][0].tolist() == [2, 2, 2, 2]  # all background
    assert spp.label_regions(*args)[1][0].tolist() == [-1, -1, -1, -1]  # best IoU 0 < 0.1: unused


def test_finetuning_never_samples_excluded_regions():
    _, spp = _models()
    spp.train()
    seen = []

    def fake_features(images, image_hw, boxes, *, pool=False):  # records what would be pooled
        seen.append(torch.cat(boxes))
        return images.new_zeros(sum(len(b) for b in boxes), spp.feature_dim), None

    spp.region_features = fake_features
    batch = ImageBatch.from_images([torch.zeros(3, 40, 40, dtype=torch.uint8)])
    targets = [{"boxes": GT[0], "labels": torch.tensor([1]), "proposals": PROPS[0]}]
    loss = spp(batch, targets)["loss_cls"]
    assert torch.isfinite(loss)
    got = sorted(map(tuple, seen[0].tolist()))
    want = sorted(map(tuple, torch.cat((GT[0], PROPS[0][:2])).tolist()))  # IoU 1, 0.6 objects; 0.3 background
    assert got == want


def test_bad_background_threshold():
    with pytest.raises(ValueError, match="bg_iou_thresh_lo"):
        RCNN(backbone=alexnet_backbone(width=0.125), num_classes=2, bg_iou_thresh_lo=0.7)
