"""The detectors built on a :class:`~detkit.backbones.base.Backbone` (trunk + region head): R-CNN,
SPPNet, Fast R-CNN and Faster R-CNN. Input and target preparation: :class:`detkit.methods.base.Detector`.
"""
from __future__ import annotations

from detkit.backbones.base import Backbone
from detkit.methods.base import Detector


class TwoStageDetector(Detector):
    """A :class:`Detector` whose network is a ``backbone``: regions are proposed (given, or by an
    RPN), then classified and refined by the backbone's region head.

    Args:
        backbone: the :class:`Backbone` (trunk + region head); its region head is also held by the
            RoI head, so it appears under both names in ``state_dict`` (same tensors). Its
            ``pixel_mean`` / ``pixel_std`` normalise the input.
        num_classes, train_on_difficult, channels_last: see :class:`Detector`.
    """

    def __init__(self, *, backbone: Backbone, num_classes: int, train_on_difficult: bool = True,
                 channels_last: bool = False) -> None:
        super().__init__(num_classes=num_classes, pixel_mean=backbone.pixel_mean, pixel_std=backbone.pixel_std,
                         train_on_difficult=train_on_difficult, channels_last=channels_last)
        self.backbone = backbone
