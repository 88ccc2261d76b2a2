"""Faster R-CNN (Ren et al. 2015): an RPN on the shared trunk proposes regions for the Fast R-CNN
head; trained end to end ("approximate joint training": no gradient through proposal boxes).
"""
from __future__ import annotations

from collections.abc import Sequence

from detkit.backbones.base import Backbone
from detkit.data.batch import ImageBatch
from detkit.methods.detector import TwoStageDetector
from detkit.methods.fast_rcnn import fast_rcnn_head
from detkit.proposals.anchors import AnchorGenerator
from detkit.proposals.rpn import RegionProposalNetwork, RPNHead
from detkit.roi_heads.fast_rcnn import FastRCNNHead


class FasterRCNN(TwoStageDetector):
    """Faster R-CNN detector: ``backbone`` trunk -> ``rpn`` proposals -> ``roi_head``.

    Args:
        backbone, num_classes, train_on_difficult, channels_last: see :class:`TwoStageDetector`.
        rpn: a :class:`RegionProposalNetwork` on ``backbone.out_channels`` features.
        roi_head: a :class:`FastRCNNHead` built on ``backbone.region_head``.

    Training returns ``{"rpn_objectness", "rpn_box", "roi_cls", "roi_box"}`` (total = sum);
    eval returns one ``{"boxes", "scores", "labels"}`` per image in the batch's image coordinates.
    """

    proposals = "rpn"

    def __init__(self, *, backbone: Backbone, rpn: RegionProposalNetwork, roi_head: FastRCNNHead,
                 num_classes: int, train_on_difficult: bool = True, channels_last: bool = False) -> None:
        super().__init__(backbone=backbone, num_classes=num_classes,
                         train_on_difficult=train_on_difficult, channels_last=channels_last)
        if roi_head.num_classes != num_classes:
            raise ValueError(f"FasterRCNN: roi_head predicts {roi_head.num_classes} classes, "
                             f"num_classes is {num_classes}")
        if rpn.anchor_generator.stride != backbone.stride:
            raise ValueError(f"FasterRCNN: anchor stride {rpn.anchor_generator.stride} != "
                             f"backbone stride {backbone.stride}")
        self.rpn = rpn
        self.roi_head = roi_head
        self._finish_init()

    def forward(self, batch: ImageBatch, targets: list[dict] | None = None):
        images, image_hw = self.preprocess(batch)
        features = self.backbone(images)
        if not self.training:
            proposals, valid, _ = self.rpn(features, image_hw)
            return self.roi_head(features, proposals, valid, image_hw)
        gt_boxes, gt_labels, gt_valid = self.prepare_targets(targets, len(batch))
        proposals, valid, losses = self.rpn(features, image_hw, gt_boxes, gt_valid)
        losses.update(self.roi_head(features, proposals, valid, image_hw, gt_boxes, gt_labels, gt_valid))
        return losses


def faster_rcnn(*, backbone: Backbone, num_classes: int,
                anchor_sizes: Sequence[float] = (128, 256, 512),
                anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                rpn_channels: int | None = None,
                rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                rpn_pre_nms_top_n_train: int = 12000, rpn_pre_nms_top_n_test: int = 6000,
                rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 300,
                rpn_nms_thresh: float = 0.7, rpn_min_size: float = 1e-3,
                rpn_allowed_border: float = 0.0,
                roi_pool_mode: str = "pool",
                roi_batch_size_per_image: int = 64, roi_positive_fraction: float = 0.25,
                roi_fg_iou_thresh: float = 0.5, roi_bg_iou_thresh_lo: float = 0.1,
                roi_smooth_l1_beta: float = 1.0,
                box_score_thresh: float = 0.05, box_nms_thresh: float = 0.3,
                box_detections_per_img: int = 100,
                train_on_difficult: bool = True, channels_last: bool = False) -> FasterRCNN:
    """Build Faster R-CNN with the paper's settings (Ren et al. 2015, Fast R-CNN for the head);
    a Hydra ``_target_``.

    ``rpn_channels`` defaults to ``min(backbone.out_channels, 512)``: 512 for VGG-16 and the
    wider trunks, 256 for ZF/AlexNet, as in the paper. ``rpn_allowed_border``: anchors crossing
    the image border by more than this many pixels are ignored in training (paper: 0; a large
    value uses them all, as torchvision does). ``roi_smooth_l1_beta``: the head's box loss
    (Fast R-CNN: 1; torchvision: 1/9).
    """
    anchors = AnchorGenerator(sizes=anchor_sizes, aspect_ratios=anchor_ratios, stride=backbone.stride)
    channels = rpn_channels if rpn_channels is not None else min(backbone.out_channels, 512)
    rpn = RegionProposalNetwork(
        head=RPNHead(in_channels=backbone.out_channels, channels=channels, num_anchors=anchors.num_anchors),
        anchor_generator=anchors,
        fg_iou_thresh=rpn_fg_iou_thresh, bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=rpn_batch_size_per_image, positive_fraction=rpn_positive_fraction,
        pre_nms_top_n_train=rpn_pre_nms_top_n_train, pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        post_nms_top_n_train=rpn_post_nms_top_n_train, post_nms_top_n_test=rpn_post_nms_top_n_test,
        nms_thresh=rpn_nms_thresh, min_size=rpn_min_size, allowed_border=rpn_allowed_border,
    )
    head = fast_rcnn_head(backbone=backbone, num_classes=num_classes, roi_pool_mode=roi_pool_mode,
                          batch_size_per_image=roi_batch_size_per_image,
                          positive_fraction=roi_positive_fraction, fg_iou_thresh=roi_fg_iou_thresh,
                          bg_iou_thresh_lo=roi_bg_iou_thresh_lo, smooth_l1_beta=roi_smooth_l1_beta,
                          score_thresh=box_score_thresh,
                          nms_thresh=box_nms_thresh, detections_per_img=box_detections_per_img)
    return FasterRCNN(backbone=backbone, rpn=rpn, roi_head=head, num_classes=num_classes,
                      train_on_difficult=train_on_difficult, channels_last=channels_last)
