"""torchvision state-dict files load into detkit's networks and backbones and reproduce
torchvision's outputs (random weights: ImageNet files cannot be downloaded here). Also VGG-16's
and ResNet-101's seed numbers, computed on the same models.

Each big model is built once per module; inputs are small (64x64).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detkit.backbones.alexnet import alexnet_tv, alexnet_tv_backbone
from detkit.backbones.googlenet import googlenet_tv, googlenet_tv_backbone
from detkit.backbones.resnet import resnet50, resnet101, resnet101_backbone
from detkit.backbones.vgg import vgg16, vgg16_backbone




tvm = torchvision.models


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics, so loading them wrongly changes the outputs."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def saved(tmp_path_factory, name: str, model: nn.Module):
    path = tmp_path_factory.mktemp("weights") / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(0)
    return torch.randn(1, 3, 64, 64)


@pytest.fixture(scope="module")
def tv_vgg(tmp_path_factory):
    torch.manual_seed(0)
    model = tvm.vgg16().eval()
    return model, saved(tmp_path_factory, "vgg16", model)


@torch.no_grad()
def test_vgg16_roundtrip_and_numbers(tv_vgg, x):
    tv, path = tv_vgg
    ours = vgg16(weights=path).eval()
    torch.testing.assert_close(ours(x), tv(x))
    assert n_params(ours) == n_params(tv)  # 138,357,544: "about 138 M"
    assert abs(n_params(ours) - 138e6) < 0.5e6
    assert ours.classifier[0].in_features == 7 * 7 * 512 == 25_088
    del ours
    bb = vgg16_backbone(weights=path).eval()
    feats = bb(x)
    torch.testing.assert_close(feats, tv.features[:-1](x))  # conv5_3 before pool5
    assert feats.shape == (1, 512, 4, 4)
    pooled = tv.avgpool(tv.features(x))  # (1, 512, 7, 7)
    torch.testing.assert_close(bb.region_head(pooled), tv.classifier[:-1](pooled.flatten(1)))


def test_state_dict_layouts_match_torchvision():
    """Keys and shapes equal torchvision's (built on the meta device: no memory, no compute)."""
    def layout(m):
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    with torch.device("meta"):
        assert layout(vgg16(norm="bn")) == layout(tvm.vgg16_bn())
        assert layout(resnet50()) == layout(tvm.resnet50())
        assert layout(googlenet_tv(aux_logits=True)) == layout(
            tvm.googlenet(aux_logits=True, init_weights=False))
        frozen = {k: s for k, s in layout(vgg16(norm="frozen_bn")).items()}
        assert frozen == {k: s for k, s in layout(tvm.vgg16_bn()).items()
                          if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def tv_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norms(tvm.resnet101()).eval()
    return model, saved(tmp_path_factory, "resnet101", model)


@torch.no_grad()
def test_resnet101_roundtrip_and_noc_split(tv_resnet, x):
    tv, path = tv_resnet
    ours = resnet101(weights=path).eval()
    torch.testing.assert_close(ours(x), tv(x))
    assert n_params(ours) == n_params(tv)
    del ours
    bb = resnet101_backbone(weights=path).eval()  # frozen batch norm by default
    feats = bb(x)
    assert feats.shape == (1, 1024, 4, 4) and (bb.out_channels, bb.stride) == (1024, 16)
    # trunk + head composed = torchvision's features before fc
    t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    t = tv.layer3(tv.layer2(tv.layer1(t)))
    # frozen batch norm folds (weight, var) into one scale: equal up to float rounding
    def close(a, b):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())

    close(feats, t)
    close(bb.region_head(feats), torch.flatten(tv.avgpool(tv.layer4(t)), 1))
    # NoC head on 14x14 RoIs: conv5_x's first block halves them to 7x7
    assert bb.region_head[0](torch.randn(1, 1024, 14, 14)).shape == (1, 2048, 7, 7)


@pytest.fixture(scope="module")
def tv_alexnet(tmp_path_factory):
    torch.manual_seed(0)
    model = tvm.alexnet().eval()
    return model, saved(tmp_path_factory, "alexnet", model)


@torch.no_grad()
def test_alexnet_tv_roundtrip(tv_alexnet):
    tv, path = tv_alexnet
    torch.manual_seed(1)
    img = torch.randn(1, 3, 96, 96)
    ours = alexnet_tv(weights=path).eval()
    torch.testing.assert_close(ours(img), tv(img))
    bb = alexnet_tv_backbone(weights=path).eval()
    # the trunk holds torchvision's conv weights, with conv1 padded 5 for stride exactly 16
    conv1 = tv.features[0]
    torch.testing.assert_close(bb.trunk[0](img),
                               F.conv2d(img, conv1.weight, conv1.bias, stride=4, padding=5))
    trunk_convs = [m for m in bb.trunk if isinstance(m, nn.Conv2d)]
    tv_convs = [m for m in tv.features if isinstance(m, nn.Conv2d)]
    for a, b in zip(trunk_convs, tv_convs, strict=True):
        torch.testing.assert_close(a.weight, b.weight)
    assert bb(img).shape == (1, 256, 6, 6)
    rois = torch.randn(2, 256, 6, 6)
    torch.testing.assert_close(bb.region_head(rois), tv.classifier[:-1](rois.flatten(1)))


@pytest.fixture(scope="module")
def tv_googlenet(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_norms(tvm.googlenet(aux_logits=False, init_weights=False)).eval()
    return model, saved(tmp_path_factory, "googlenet", model)


@torch.no_grad()
def test_googlenet_tv_roundtrip(tv_googlenet, x):
    tv, path = tv_googlenet
    ours = googlenet_tv(weights=path, transform_input=False).eval()
    torch.testing.assert_close(ours(x), tv(x))
    # torchvision's input transform for its ImageNet weights
    tv.transform_input = ours.transform_input = True
    try:
        torch.testing.assert_close(ours(x), tv(x))
    finally:
        tv.transform_input = False
    bb = googlenet_tv_backbone(weights=path).eval()
    # with torchvision weights, inputs are scaled to [-1, 1] by the detector's normalisation
    assert bb.pixel_mean == (0.5, 0.5, 0.5) and bb.pixel_std == (0.5, 0.5, 0.5)
    t = tv.maxpool2(tv.conv3(tv.conv2(tv.maxpool1(tv.conv1(x)))))
    t = tv.maxpool3(tv.inception3b(tv.inception3a(t)))
    for name in "abcde":
        t = getattr(tv, f"inception4{name}")(t)
    torch.testing.assert_close(bb(x), t)  # (1, 832, 4, 4)
    rois = torch.randn(2, 832, 7, 7)
    expected = torch.flatten(tv.avgpool(tv.inception5b(tv.inception5a(rois))), 1)
    torch.testing.assert_close(bb.region_head(rois), expected)


def test_mismatched_big_file_gives_clear_error(tv_vgg):
    _, path = tv_vgg
    from detkit.backbones.weights import WeightsMismatchError

    with pytest.raises(WeightsMismatchError, match="vgg16.pth"):
        resnet101_backbone(width=0.25, weights=path)


@torch.no_grad()
def test_a_weights_file_reaches_a_detector_through_the_config(tv_alexnet):
    """The route docs/training.md gives users: backbone.weights=FILE on any method's config."""
    import detkit

    tv, path = tv_alexnet
    model = detkit.build("faster_rcnn", "alexnet_tv", num_classes=2, **{"backbone.weights": str(path),
                                                                        "backbone.frozen_stages": 2})
    first = model.backbone.trunk[0]
    assert torch.equal(first.weight, tv.features[0].weight)
    assert torch.equal(model.backbone.region_head[5].weight, tv.classifier[4].weight)  # fc7
    assert not first.weight.requires_grad  # frozen_stages=2: conv1-conv2 stay fixed
