"""SPPNet for detection (He et al. 2014, §4): the trunk runs once per image (at one or several
scales), each proposal's window on the last conv map is spatial-pyramid pooled into a fixed
``C * 50`` vector (levels 6, 3, 2, 1) that feeds fc6-fc7; then SVMs or softmax, box regression
and per-class NMS exactly as R-CNN (``detkit.methods.rcnn.RegionDetector``).

Scales: ``scales`` are shorter-side lengths (SPPNet: 480, 576, 688, 864, 1200); every image of the
batch is resized to each, and each proposal is pooled at the one scale where its area is closest
to 224 x 224 (``detkit.roi_heads.spp.best_scale``). ``scales=None`` runs the trunk once on the
image as given (the batch's resize, e.g. a 600 px shorter side): the CPU-friendly single scale.

fc6: the backbone's region head expects ``C * roi_size^2`` inputs, the pyramid gives ``C * 50``,
so SPPNet builds its own fc6 (``Linear(C * 50, fc6.out_features)``). When the pyramid has a level
equal to the backbone's ``roi_size`` (6 for AlexNet/ZF), that level's columns are initialised
with the backbone's fc6 weights (the same ``(C, l, l)`` channel-major layout) and the other levels'
columns with zeros, so at initialisation the network computes the classification net's fc6 on the
6 x 6 level; otherwise fc6 is fresh (PyTorch's default ``Linear`` init). The new head
(``mods before fc6 + new fc6 + fc7...``) replaces ``backbone.region_head``. Only backbones whose
region head is fully connected (AlexNet, ZFNet, VGG-16) fit SPPNet.

The trunk is frozen (the paper fine-tunes only the fc layers) unless ``train_trunk``; a frozen trunk
runs without gradients and in eval mode (batch norm statistics unchanged).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones.base import Backbone, freeze
from detkit.methods.rcnn import RegionDetector
from detkit.roi_heads.spp import SpatialPyramidPool

PAPER_SCALES = (480, 576, 688, 864, 1200)


def spp_head(region_head: nn.Module, *, channels: int, levels: Sequence[int], roi_size: int) -> nn.Sequential:
    """The region head with fc6 rebuilt for ``channels * sum(l^2)`` inputs (module docstring)."""
    mods = list(region_head.children()) if isinstance(region_head, nn.Sequential) else []
    idx = next((i for i, m in enumerate(mods) if isinstance(m, nn.Linear)), None)
    if idx is None:
        raise ValueError("SPPNet needs a backbone whose region head is fully connected "
                         f"(fc6-fc7: alexnet, zfnet, vgg16); got {type(region_head).__name__} without nn.Linear")
    old = mods[idx]
    bins = sum(v * v for v in levels)
    fc6 = nn.Linear(channels * bins, old.out_features)
    if old.in_features == channels * roi_size ** 2 and roi_size in levels:
        start = channels * sum(v * v for v in levels[:list(levels).index(roi_size)])
        with torch.no_grad():
            fc6.weight.zero_()
            fc6.weight[:, start:start + old.in_features] = old.weight
            fc6.bias.copy_(old.bias)
    return nn.Sequential(*mods[:idx], fc6, *mods[idx + 1:])


class SPPNet(RegionDetector):
    """SPPNet detector. Args: ``levels`` (pyramid, 6/3/2/1), ``scales`` (shorter sides or ``None``),
    ``target`` (224: the scale choice's reference side), ``train_trunk`` (False: conv frozen);
    the rest as ``RegionDetector``. Features: SPP ``(R, C * 50)`` (box regression), fc7
    ``(R, head_channels)`` (SVMs).
    """

    phases = {"preprocess": ["preprocess"], "trunk": ["conv_maps"], "region_head": ["region_features"],
              "postprocess": ["detect"], "rois": ["backbone.region_head"]}

    def __init__(self, *, backbone: Backbone, num_classes: int, levels: Sequence[int] = (6, 3, 2, 1),
                 scales: Sequence[int] | None = PAPER_SCALES, target: float = 224.0,
                 train_trunk: bool = False, **kwargs) -> None:
        levels = tuple(int(v) for v in levels)
        spp = SpatialPyramidPool(levels=levels, spatial_scale=1.0 / backbone.stride)
        backbone.region_head = spp_head(backbone.region_head, channels=backbone.out_channels,
                                        levels=levels, roi_size=backbone.roi_size)
        super().__init__(backbone=backbone, num_classes=num_classes, feature_dim=backbone.head_channels,
                         pool_dim=backbone.out_channels * spp.num_bins, **kwargs)
        if scales is not None and (len(scales) == 0 or any(s <= 0 for s in scales)):
            raise ValueError(f"SPPNet: scales must be positive shorter-side lengths or null, got {scales}")
        self.spp = spp
        self.scales = None if scales is None else tuple(int(s) for s in scales)
        self.target, self.train_trunk = float(target), bool(train_trunk)
        if not self.train_trunk:
            freeze(backbone.trunk)
        self._finish_init()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_trunk:
            self.backbone.trunk.eval()  # frozen conv layers: no batch-norm statistic updates
        return self

    def scale_factors(self, hw: tuple[int, int]) -> list[float]:
        """Resize factors of one ``(h, w)`` image for ``scales`` (``[1.0]`` when ``None``)."""
        return [1.0] if self.scales is None else [s / min(hw) for s in self.scales]

    def conv_maps(self, image: Tensor, factors: Sequence[float]) -> list[Tensor]:
        """One ``(1, 3, h, w)`` normalised image -> its trunk map ``(1, C, Hf, Wf)`` per factor."""
        maps = []
        h, w = image.shape[-2:]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_trunk):
            for f in factors:
                x = image if f == 1.0 else F.interpolate(
                    image, size=(max(1, round(h * f)), max(1, round(w * f))), mode="bilinear",
                    align_corners=False, antialias=f < 1)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                maps.append(self.backbone.trunk(x))
        return maps

    def region_features(self, images, image_hw, boxes, *, pool=False):
        fcs, pools = [], []
        for i, b in enumerate(boxes):
            if len(b) == 0:
                continue
            h, w = (int(v) for v in image_hw[i])
            factors = self.scale_factors((h, w))
            maps = self.conv_maps(images[i:i + 1, :, :h, :w], factors)  # trunk once per image and scale
            fac = torch.tensor([factors], device=images.device)
            for chunk in b.split(self.chunk_size or len(b)):
                feats = self.spp.forward_multiscale(maps, [chunk], fac, target=self.target)
                fcs.append(self.backbone.region_head(feats))
                if pool:
                    pools.append(feats)
        if not fcs:
            return images.new_zeros(0, self.feature_dim), (images.new_zeros(0, self.pool_dim) if pool else None)
        return torch.cat(fcs), (torch.cat(pools) if pool else None)
