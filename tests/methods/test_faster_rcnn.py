import pytest
import torch
from torch import nn

from detkit.backbones.base import Backbone
from detkit.data.batch import ImageBatch
from detkit.methods.faster_rcnn import FasterRCNN, faster_rcnn


def tiny_backbone(channels=16):
    """Test scaffolding: 4 stride-2 convs (stride 16) and an fc region head on 4 x 4 RoIs."""
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, stride=2, padding=1), nn.ReLU()]
    head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4 * 4, 32), nn.ReLU())
    return Backbone(trunk=nn.Sequential(*layers), region_head=head, out_channels=channels, stride=16,
                    roi_size=4, head_channels=32, input_size=64, name="tiny")


def synthetic_batch():
    """Two images of different true sizes, two bright/dark rectangles each (classes 0 and 1)."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for (h, w), boxes in (((128, 160), [[30, 20, 90, 60], [100, 70, 150, 120]]),
                          ((96, 128), [[10, 50, 50, 90], [60, 10, 120, 50]])):
        im = torch.randint(90, 160, (3, h, w), dtype=torch.uint8, generator=g)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            im[:, y1:y2, x1:x2] = 250 if k == 0 else 5
        images.append(im)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([0, 1]),
                        "difficult": torch.zeros(2, dtype=torch.bool), "iscrowd": torch.zeros(2, dtype=torch.bool)})
    return ImageBatch.from_images(images), targets


def tiny_faster_rcnn(**kwargs):
    torch.manual_seed(0)
    return faster_rcnn(backbone=tiny_backbone(), num_classes=2, anchor_sizes=(32, 64),
                       rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
                       rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50, **kwargs)


def test_builder_uses_backbone_contract():
    model = tiny_faster_rcnn()
    assert isinstance(model, FasterRCNN)
    assert model.rpn.head.conv.out_channels == 16  # min(out_channels, 512)
    assert model.rpn.head.num_anchors == 6
    assert model.roi_head.box_head is model.backbone.region_head
    assert model.roi_head.roi_pool.output_size == 4 and model.roi_head.roi_pool.spatial_scale == 1 / 16
    assert faster_rcnn(backbone=tiny_backbone(600), num_classes=2).rpn.head.conv.out_channels == 512


def test_training_reduces_loss():
    model = tiny_faster_rcnn().train()
    batch, targets = synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    totals = []
    for _ in range(30):
        losses = model(batch, targets)
        assert set(losses) == {"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3]), totals


def test_eval_boxes_inside_each_image():
    model = tiny_faster_rcnn().eval()
    batch, _ = synthetic_batch()
    with torch.no_grad():
        out = model(batch)
    assert len(out) == 2
    for det, (h, w) in zip(out, batch.image_sizes):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["labels"].dtype == torch.int64 and len(det["boxes"]) > 0
        assert ((det["labels"] >= 0) & (det["labels"] < 2)).all()
        b = det["boxes"]
        assert (b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_image_without_objects_trains():
    model = tiny_faster_rcnn().train()
    batch, targets = synthetic_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(batch, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_head.predictor.cls_score.weight.grad.abs().sum() > 0
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(batch, empty)
    assert losses["rpn_box"].item() == 0 and losses["roi_box"].item() == 0
    assert torch.isfinite(losses["roi_cls"])


def test_crowd_and_difficult_ground_truth():
    batch, targets = synthetic_batch()
    targets[0]["iscrowd"] = torch.tensor([True, False])
    targets[1]["difficult"] = torch.tensor([False, True])
    _, _, valid = tiny_faster_rcnn().prepare_targets(targets, 2)
    assert valid.tolist() == [[False, True], [True, True]]  # difficult used, as in the papers
    _, _, valid = tiny_faster_rcnn(train_on_difficult=False).prepare_targets(targets, 2)
    assert valid.tolist() == [[False, True], [True, False]]


def test_channels_last_and_padding_normalisation():
    model = tiny_faster_rcnn(channels_last=True).eval()
    batch, _ = synthetic_batch()
    x, hw = model.preprocess(batch)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert hw.tolist() == [[128, 160], [96, 128]]
    assert (x[1, :, 96:, :] == 0).all() and (x[1, :, :, 128:] == 0).all()  # padding = mean colour
    px = batch.tensor[0, :, 0, 0].float() / 255
    mean, std = torch.tensor(model.backbone.pixel_mean), torch.tensor(model.backbone.pixel_std)
    assert torch.allclose(x[0, :, 0, 0], (px - mean) / std, atol=1e-5)
    with torch.no_grad():
        assert len(model(batch)) == 2


def test_bad_inputs_raise_clear_errors():
    model = tiny_faster_rcnn().train()
    batch, targets = synthetic_batch()
    with pytest.raises(ValueError, match="needs targets"):
        model(batch)
    with pytest.raises(ValueError, match="uint8"):
        model(type(batch)(batch.tensor.float(), batch.image_sizes), targets)
    targets[0]["labels"] = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        model(batch, targets)
