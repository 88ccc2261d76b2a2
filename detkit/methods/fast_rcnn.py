"""Fast R-CNN (Girshick 2015): given proposals, one trunk pass per image, RoI pooling, region head,
softmax + class-specific box regression.

Proposals come from outside (selective search or any boxes): ``model(batch, targets, proposals=...)``
with one ``(P_i, 4)`` xyxy tensor per image in the batch's (resized) image pixel coordinates.
For inference on arbitrary images (tools/infer.py passes none) a built-in ``proposer`` can run
selective search on each image of the batch instead (eval mode only; training always takes the
dataset's proposals, so that the boxes are computed once and cached).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from detkit.backbones.base import Backbone
from detkit.data.batch import ImageBatch
from detkit.methods.detector import TwoStageDetector
from detkit.ops.box_coder import clip_boxes
from detkit.roi_heads.box_predictor import FastRCNNPredictor
from detkit.roi_heads.fast_rcnn import FastRCNNHead
from detkit.roi_heads.roi_pool import RoIPool


class FastRCNN(TwoStageDetector):
    """Fast R-CNN detector: ``backbone`` trunk + ``roi_head`` on supplied proposals.

    Args:
        backbone, num_classes, train_on_difficult, channels_last: see :class:`TwoStageDetector`.
        roi_head: a :class:`FastRCNNHead` built on ``backbone.region_head``.
        proposer: ``"selective_search"``: in eval mode, when no ``proposals`` are given, search each
            batch image (uint8, its true unpadded size, on the CPU) for them; ``None``: proposals
            must always be given.
        proposer_mode, proposer_max_side, proposer_min_size, proposer_max_proposals, proposer_base_k,
            proposer_inc_k, proposer_sigma: the search's ``mode``, ``max_side``, ``min_size``,
            ``max_proposals``, ``base_k``, ``inc_k``, ``sigma`` (``detkit.proposals.selective_search``);
            use the settings the training proposals were made with.
    """

    def __init__(self, *, backbone: Backbone, roi_head: FastRCNNHead, num_classes: int,
                 train_on_difficult: bool = True, channels_last: bool = False, proposer: str | None = None,
                 proposer_mode: str = "fast", proposer_max_side: int | None = 500, proposer_min_size: float = 20,
                 proposer_max_proposals: int | None = None, proposer_base_k: int = 150,
                 proposer_inc_k: int = 150, proposer_sigma: float = 0.8) -> None:
        super().__init__(backbone=backbone, num_classes=num_classes,
                         train_on_difficult=train_on_difficult, channels_last=channels_last)
        if roi_head.num_classes != num_classes:
            raise ValueError(f"FastRCNN: roi_head predicts {roi_head.num_classes} classes, "
                             f"num_classes is {num_classes}")
        if proposer not in (None, "selective_search"):
            raise ValueError(f"FastRCNN: proposer must be 'selective_search' or None, got {proposer!r}")
        if proposer_mode not in ("fast", "quality", "single"):
            raise ValueError(f"FastRCNN: proposer_mode must be fast, quality or single, got {proposer_mode!r}")
        self.roi_head = roi_head
        self.proposer = proposer
        self.proposer_options = {"mode": proposer_mode, "max_side": proposer_max_side or None,
                                 "min_size": proposer_min_size, "max_proposals": proposer_max_proposals,
                                 "base_k": int(proposer_base_k), "inc_k": int(proposer_inc_k),
                                 "sigma": float(proposer_sigma)}
        self._finish_init()

    def forward(self, batch: ImageBatch, targets: list[dict] | None = None,
                proposals: Sequence[Tensor] | None = None):
        """Train: ``{"roi_cls", "roi_box"}``; eval: one ``{"boxes", "scores", "labels"}`` per image."""
        if proposals is None and self.proposer is not None and not self.training:
            proposals = self.propose(batch)
        if proposals is None:
            raise ValueError("FastRCNN needs proposals: call model(batch, targets, "
                             "proposals=[(P_i, 4) tensor per image, xyxy in resized-image pixels])"
                             + ("" if self.training else ", or build it with proposer='selective_search'"))
        images, image_hw = self.preprocess(batch)
        props, valid = self.pad_proposals(proposals, image_hw)
        features = self.backbone(images)
        if self.training:
            gt_boxes, gt_labels, gt_valid = self.prepare_targets(targets, len(batch))
            return self.roi_head(features, props, valid, image_hw, gt_boxes, gt_labels, gt_valid)
        return self.roi_head(features, props, valid, image_hw)

    @torch.no_grad()
    def propose(self, batch: ImageBatch) -> list[Tensor]:
        """Selective search on each image of ``batch`` -> ``(P_i, 4)`` float32 CPU tensors, xyxy in
        the batch's pixels. CPU work (OpenCV), one image after another."""
        import cv2

        if not hasattr(cv2, "ximgproc"):  # opencv-python lacks the contrib modules
            raise ImportError("FastRCNN: the selective search proposer needs opencv-contrib-python "
                              "(cv2.ximgproc is missing); install it, or pass proposals= explicitly")
        from detkit.proposals.selective_search import selective_search

        out = []
        for i, (h, w) in enumerate(batch.image_sizes):
            image = batch.tensor[i, :, :h, :w].permute(1, 2, 0).cpu().numpy()  # (h, w, 3) uint8 RGB
            out.append(torch.from_numpy(selective_search(image, **self.proposer_options)))
        return out

    def pad_proposals(self, proposals: Sequence[Tensor], image_hw: Tensor) -> tuple[Tensor, Tensor]:
        """List of ``(P_i, 4)`` -> clipped ``(N, P, 4)`` and ``valid`` ``(N, P)``."""
        n = image_hw.shape[0]
        if len(proposals) != n:
            raise ValueError(f"FastRCNN: {len(proposals)} proposal tensors for {n} images")
        device = image_hw.device
        boxes = []
        for i, p in enumerate(proposals):
            p = torch.as_tensor(p, dtype=torch.float32)
            if p.dim() != 2 or p.shape[1] != 4:
                if not (p.numel() == 0):
                    raise ValueError(f"FastRCNN: proposals for image {i} must be (P, 4), got {tuple(p.shape)}")
                p = p.reshape(0, 4)
            boxes.append(p.to(device, non_blocking=True))
        lengths = torch.tensor([len(b) for b in boxes]).to(device, non_blocking=True)
        padded = pad_sequence(boxes, batch_first=True).reshape(n, -1, 4)
        valid = torch.arange(padded.shape[1], device=device)[None, :] < lengths[:, None]
        return clip_boxes(padded, image_hw), valid


def fast_rcnn_head(*, backbone: Backbone, num_classes: int, roi_pool_mode: str = "pool",
                   **head_kwargs) -> FastRCNNHead:
    """The Fast R-CNN RoI head for ``backbone``: RoI pooling at its ``roi_size`` / ``1 / stride``,
    its region head, and a predictor on its ``head_channels``. ``head_kwargs`` go to
    :class:`FastRCNNHead` (paper defaults there)."""
    return FastRCNNHead(
        roi_pool=RoIPool(output_size=backbone.roi_size, spatial_scale=1.0 / backbone.stride, mode=roi_pool_mode),
        box_head=backbone.region_head,
        predictor=FastRCNNPredictor(in_channels=backbone.head_channels, num_classes=num_classes),
        **head_kwargs,
    )


def fast_rcnn(*, backbone: Backbone, num_classes: int, roi_pool_mode: str = "pool",
              batch_size_per_image: int = 64, positive_fraction: float = 0.25,
              fg_iou_thresh: float = 0.5, bg_iou_thresh_lo: float = 0.1, smooth_l1_beta: float = 1.0,
              score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100,
              train_on_difficult: bool = True, channels_last: bool = False, proposer: str | None = None,
              proposer_mode: str = "fast", proposer_max_side: int | None = 500, proposer_min_size: float = 20,
              proposer_max_proposals: int | None = None, proposer_base_k: int = 150, proposer_inc_k: int = 150,
              proposer_sigma: float = 0.8) -> FastRCNN:
    """Build Fast R-CNN with the paper's settings (Girshick 2015); a Hydra ``_target_``.
    ``proposer*``: the built-in proposer for inference without given proposals (:class:`FastRCNN`)."""
    head = fast_rcnn_head(backbone=backbone, num_classes=num_classes, roi_pool_mode=roi_pool_mode,
                          batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
                          fg_iou_thresh=fg_iou_thresh, bg_iou_thresh_lo=bg_iou_thresh_lo,
                          smooth_l1_beta=smooth_l1_beta, score_thresh=score_thresh, nms_thresh=nms_thresh,
                          detections_per_img=detections_per_img)
    return FastRCNN(backbone=backbone, roi_head=head, num_classes=num_classes,
                    train_on_difficult=train_on_difficult, channels_last=channels_last, proposer=proposer,
                    proposer_mode=proposer_mode, proposer_max_side=proposer_max_side,
                    proposer_min_size=proposer_min_size, proposer_max_proposals=proposer_max_proposals,
                    proposer_base_k=proposer_base_k, proposer_inc_k=proposer_inc_k, proposer_sigma=proposer_sigma)
