"""SPPNet: pyramid features through the method, per-proposal scale choice, frozen conv (CPU, tiny)."""
import pytest
import torch

from detkit.backbones.alexnet import alexnet_backbone
from detkit.data.batch import ImageBatch
from detkit.engine.optim import build_optimizer
from detkit.methods.sppnet import SPPNet


def _model(**kw):
    torch.manual_seed(0)
    return SPPNet(backbone=alexnet_backbone(width=0.125), num_classes=3, **kw)


@pytest.mark.parametrize("hw", [(64, 96), (128, 80), (33, 47)])
def test_spp_feature_size_is_50_c(hw):
    model = _model(scales=None).eval()
    c = model.backbone.out_channels
    h, w = hw
    boxes = torch.tensor([[0, 0, w, h], [3, 4, 5, 6], [10, 2, w - 1, h - 3.]])
    images, image_hw = model.preprocess(ImageBatch.from_images([torch.randint(0, 256, (3, h, w), dtype=torch.uint8)]))
    with torch.no_grad():
        fc, pool = model.region_features(images, image_hw, [boxes], pool=True)
    assert pool.shape == (3, 50 * c) and model.pool_dim == 50 * c
    assert fc.shape == (3, model.backbone.head_channels)


def test_fc6_initialised_from_backbone_on_the_6x6_level():
    torch.manual_seed(0)
    backbone = alexnet_backbone(width=0.125)
    old = [m for m in backbone.region_head if isinstance(m, torch.nn.Linear)][0].weight.detach().clone()
    model = SPPNet(backbone=backbone, num_classes=2, scales=None)
    fc6 = [m for m in model.backbone.region_head if isinstance(m, torch.nn.Linear)][0]
    c = model.backbone.out_channels
    assert fc6.in_features == 50 * c
    assert torch.equal(fc6.weight[:, : 36 * c], old) and (fc6.weight[:, 36 * c:] == 0).all()


def test_each_proposal_pooled_at_its_best_scale():
    model = _model(scales=(224, 448)).eval()  # 64 px image: factors 3.5 and 7
    boxes = torch.tensor([[0, 0, 64, 64], [10, 10, 42, 42.]])  # 224^2 at x3.5; 224^2 at x7
    images, image_hw = model.preprocess(ImageBatch.from_images([torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)]))
    with torch.no_grad():
        _, pool = model.region_features(images, image_hw, [boxes], pool=True)
        maps = model.conv_maps(images[:, :, :64, :64], [3.5, 7.0])
        big = model.spp(maps[0], torch.cat((torch.zeros(1, 1), boxes[:1] * 3.5), 1))
        small = model.spp(maps[1], torch.cat((torch.zeros(1, 1), boxes[1:] * 7.0), 1))
        wrong = model.spp(maps[0], torch.cat((torch.zeros(1, 1), boxes[1:] * 3.5), 1))
    assert torch.allclose(pool[0], big[0]) and torch.allclose(pool[1], small[0])
    assert not torch.allclose(pool[1], wrong[0])


def test_conv_frozen_during_finetuning():
    model = _model(scales=None, batch_regions=16).train()
    trunk_before = {k: v.clone() for k, v in model.backbone.trunk.state_dict().items()}
    head_before = [p.detach().clone() for p in model.backbone.region_head.parameters()]
    opt = build_optimizer(model, lr=0.01, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=False)
    batch = ImageBatch.from_images([torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)])
    targets = [{"boxes": torch.tensor([[5, 5, 40, 50.]]), "labels": torch.tensor([2]),
                "proposals": torch.tensor([[4, 6, 41, 50], [50, 10, 90, 60], [0, 0, 30, 20.]])}]
    loss = sum(model(batch, targets).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.equal(v, trunk_before[k]) for k, v in model.backbone.trunk.state_dict().items())
    assert not all(not p.requires_grad for p in model.backbone.region_head.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.backbone.region_head.parameters(), head_before))
