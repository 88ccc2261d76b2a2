"""Shared backbone options (norm, width, freezing) and the weights loader's error handling."""
from __future__ import annotations

import urllib.error

import pytest
import torch
from torch import nn

from detkit.backbones.alexnet import alexnet
from detkit.backbones.norm import (FrozenBatchNorm2d, freeze_norms, gn_groups, make_norm,
                                   scale_width)
from detkit.backbones.resnet import resnet50
from detkit.backbones.vgg import vgg16
from detkit.backbones.weights import (WeightsFileError, WeightsMismatchError,
                                      WeightsUnavailableError, load_state_dict_file,
                                      read_state_dict, resolve_weights)




def test_make_norm_kinds_and_groups():
    assert isinstance(make_norm("none", 16), nn.Identity)
    assert isinstance(make_norm("bn", 16), nn.BatchNorm2d)
    assert isinstance(make_norm("frozen_bn", 16), FrozenBatchNorm2d)
    gn = make_norm("gn", 256)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32
    # fewer channels than 32 groups: the largest divisor <= 32
    assert gn_groups(24) == 24 and gn_groups(8) == 8 and gn_groups(48) == 24
    with pytest.raises(ValueError, match="unknown norm"):
        make_norm("batchnorm", 16)


def test_scale_width_rounds_to_multiples_of_8():
    assert scale_width(96, 1.0) == 96 and scale_width(1000, 1.0) == 1000
    assert scale_width(96, 0.25) == 24 and scale_width(4096, 0.25) == 1024
    assert scale_width(20, 0.25) == 8  # 5 -> at least 8
    assert scale_width(384, 0.1) == 40  # 38.4 -> nearest multiple of 8
    with pytest.raises(ValueError):
        scale_width(64, 0.0)


def test_freeze_norms_keeps_the_function():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    bn = net[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = torch.randn(2, 3, 9, 9)
    expected = net.eval()(x)
    freeze_norms(net)
    assert isinstance(net[1], FrozenBatchNorm2d)
    net.train()  # frozen: training mode must not use batch statistics
    torch.testing.assert_close(net(x), expected)


@pytest.fixture(scope="module")
def small_vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "vgg_small.pth"
    torch.save(vgg16(width=0.125).state_dict(), path)
    return path


def test_mismatched_file_lists_keys_and_names_the_file(small_vgg_file):
    with pytest.raises(WeightsMismatchError) as err:
        resnet50(width=0.125, weights=str(small_vgg_file))
    msg = str(err.value)
    assert str(small_vgg_file) in msg
    assert "missing" in msg and "conv1.weight" in msg
    assert "unexpected" in msg and "features.0.weight" in msg
    assert "more" in msg  # long lists are cut to the first 10


def test_shape_mismatch_is_listed(small_vgg_file):
    with pytest.raises(WeightsMismatchError, match=r"shape mismatch.*features\.0\.weight"):
        vgg16(width=0.25, weights=str(small_vgg_file))
    # not strict: every tensor of the 13 convs and 3 fcs mismatches except fc8's bias (1000
    # classes don't scale with width), which is the only one loaded
    dst = vgg16(width=0.25)
    report = load_state_dict_file(dst, small_vgg_file, strict=False)
    assert not report.missing and not report.unexpected and len(report.mismatched) == 16 * 2 - 1
    torch.testing.assert_close(dst.classifier[6].bias, read_state_dict(small_vgg_file)[
        "classifier.6.bias"])


def test_corrupt_truncated_and_missing_files(tmp_path, small_vgg_file):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(small_vgg_file.read_bytes()[:5000])
    for path in (garbage, truncated):
        with pytest.raises(WeightsFileError, match="corrupt") as err:
            vgg16(width=0.125, weights=str(path))
        assert str(path) in str(err.value) and isinstance(err.value, OSError)
    with pytest.raises(WeightsFileError, match="does not exist"):
        vgg16(width=0.125, weights=str(tmp_path / "nope.pth"))
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state_dict)
    with pytest.raises(WeightsFileError, match="does not hold a state dict"):
        read_state_dict(not_a_state_dict)


def test_wrapped_checkpoint_and_prefix_map(tmp_path):
    torch.manual_seed(1)
    src = vgg16(width=0.125)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    dst = vgg16(width=0.125)
    report = load_state_dict_file(dst, path, prefix_map={"backbone.": ""})
    assert report.ok
    torch.testing.assert_close(dst.features[0].weight, src.features[0].weight)
    # dropping the classifier with None and loading the rest non-strictly
    dst2 = vgg16(width=0.125)
    report = load_state_dict_file(dst2, path, prefix_map={"backbone.classifier.": None,
                                                          "backbone.": ""}, strict=False)
    assert sorted(report.missing)[0] == "classifier.0.bias" and not report.unexpected
    torch.testing.assert_close(dst2.features[2].weight, src.features[2].weight)


def test_enum_names_without_internet(monkeypatch):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="download https://.*local path") as err:
        resolve_weights("IMAGENET1K_V1", "vgg16")
    assert isinstance(err.value, OSError)
    with pytest.raises(WeightsUnavailableError, match="known names"):
        resolve_weights("IMAGENET9K_V9", "resnet101")
    # the paper AlexNet has no torchvision weights at all
    with pytest.raises(WeightsUnavailableError, match="no weights"):
        alexnet(width=0.125, weights="IMAGENET1K_V1")
