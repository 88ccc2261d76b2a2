import pytest
import torch
from torch import nn

from detkit.backbones.base import Backbone
from detkit.data.batch import ImageBatch
from detkit.methods.fast_rcnn import FastRCNN, fast_rcnn


def tiny_backbone(channels=16):
    """Test scaffolding: 4 stride-2 convs (stride 16), a conv region head ending in (R, D, 1, 1)."""
    layers = []
    for i in range(4):
        layers += [nn.Conv2d(3 if i == 0 else channels, channels, 3, stride=2, padding=1), nn.ReLU()]
    # Not fc layers on purpose: the predictor must accept a pooled conv map, as in ResNet NoC.
    head = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    for m in [*layers, *head]:  # He init keeps activations from shrinking through the tiny trunk
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return Backbone(trunk=nn.Sequential(*layers), region_head=head, out_channels=channels, stride=16,
                    roi_size=4, head_channels=32, input_size=64, name="tiny-conv-head")


def synthetic_batch():
    """Two images of different sizes with 2 objects each, plus jittered/random proposals."""
    g = torch.Generator().manual_seed(0)
    images, targets, proposals = [], [], []
    for (h, w), boxes in (((128, 160), [[30, 20, 90, 60], [100, 70, 150, 120]]),
                          ((96, 128), [[10, 50, 50, 90], [60, 10, 120, 50]])):
        im = torch.randint(90, 160, (3, h, w), dtype=torch.uint8, generator=g)
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            im[:, y1:y2, x1:x2] = 250 if k == 0 else 5
        b = torch.tensor(boxes, dtype=torch.float32)
        jitter = b.repeat(20, 1) + torch.randn(40, 4, generator=g) * 6
        xy = torch.rand(40, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        rand = torch.cat((xy, xy + 10 + torch.rand(40, 2, generator=g) * 40), 1)
        images.append(im)
        targets.append({"boxes": b, "labels": torch.tensor([0, 1])})
        proposals.append(torch.cat((jitter, rand)))
    return ImageBatch.from_images(images), targets, proposals


def tiny_fast_rcnn(**kwargs):
    torch.manual_seed(0)
    return fast_rcnn(backbone=tiny_backbone(), num_classes=2, **kwargs)


def test_missing_proposals_is_a_clear_error():
    model = tiny_fast_rcnn()
    batch, targets, proposals = synthetic_batch()
    with pytest.raises(ValueError, match="needs proposals"):
        model(batch, targets)
    with pytest.raises(ValueError, match="2 images"):
        model(batch, targets, proposals=proposals[:1])
    with pytest.raises(ValueError, match=r"must be \(P, 4\)"):
        model(batch, targets, proposals=[proposals[0], torch.zeros(3, 5)])


def test_training_reduces_loss():
    model = tiny_fast_rcnn().train()
    assert isinstance(model, FastRCNN)
    batch, targets, proposals = synthetic_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(30):
        losses = model(batch, targets, proposals=proposals)
        assert set(losses) == {"roi_cls", "roi_box"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((losses["roi_cls"].item(), losses["roi_box"].item()))
    first, last = torch.tensor(history[:3]).mean(0), torch.tensor(history[-3:]).mean(0)
    assert last.sum() < 0.8 * first.sum(), history
    assert last[0] < 0.7 * first[0] and last[1] < first[1], history


def test_eval_with_given_proposals():
    model = tiny_fast_rcnn(score_thresh=0.0).eval()
    batch, _, proposals = synthetic_batch()
    proposals[1] = proposals[1][:7]  # different counts per image
    proposals[0] = proposals[0] + torch.tensor([0.0, 0.0, 500.0, 500.0])  # beyond the image: clipped
    with torch.no_grad():
        out = model(batch, proposals=proposals)
    assert len(out) == 2
    for det, (h, w) in zip(out, batch.image_sizes):
        assert len(det["boxes"]) > 0 and ((det["labels"] >= 0) & (det["labels"] < 2)).all()
        b = det["boxes"]
        assert (b >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    # Per-class NMS can only reduce: at most 7 proposals x 2 classes in image 1.
    assert len(out[1]["boxes"]) <= 14


def test_image_without_objects_or_proposals_trains():
    model = tiny_fast_rcnn().train()
    batch, targets, proposals = synthetic_batch()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    proposals[0] = torch.zeros(0, 4)  # only the appended ground truth for image 0
    losses = model(batch, targets, proposals=proposals)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
