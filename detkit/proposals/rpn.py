"""The Region Proposal Network (Faster R-CNN §3.1), batched over the images of a batch.

Shape letters (as in detectron2's rpn.py):

* ``N``: images in the batch;
* ``C``: trunk channels (``Backbone.out_channels``); ``Hf, Wf``: feature-map height and width;
* ``A``: anchors per feature location (3 sizes × 3 ratios = 9 by default);
* ``T = Hf * Wf * A``: anchors per image, ordered as in :mod:`detkit.proposals.anchors`;
* ``G``: ground-truth slots per image (padded; ``gt_valid`` marks the real ones);
* ``S``: anchors sampled per image for the loss (256);
* ``P``: proposals per image after NMS (``post_nms_top_n``; padded, ``valid`` marks real ones).

Training follows the paper: 256 anchors per image at up to 1:1 positive:negative, positive at
IoU >= 0.7 or the best anchor of a ground truth, negative below 0.3, anchors crossing the image
boundary ignored (checked against each image's true size, not the padded one). Losses:

* ``rpn_objectness``: binary cross-entropy (the paper's 2-way softmax as one logit), mean over
  the sampled anchors;
* ``rpn_box``: smooth-L1 with ``beta = 1/9`` (the original implementation's ``sigma = 3``) on the
  positive anchors' deltas, summed and divided by the number of sampled anchors (the
  torchvision/detectron2 normalisation; the paper's ``lambda = 10`` with ``N_reg ~ 2400`` anchor
  locations is within a constant of it).

Proposals: decode, clip to the image, drop tiny boxes, top ``pre_nms_top_n`` by objectness,
NMS 0.7 per image, keep ``post_nms_top_n`` (2000 train, 300 test; :func:`detkit.ops.nms.nms_top_n`
stops NMS once that many survive). Proposals carry no gradient (approximate joint training).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.ops.box_coder import BoxCoder, clip_boxes
from detkit.ops.matcher import Matcher, batched_box_iou
from detkit.ops.nms import nms_top_n
from detkit.ops.sampler import sample_balanced
from detkit.proposals.anchors import AnchorGenerator


class RPNHead(nn.Module):
    """3×3 conv + ReLU, then sibling 1×1 convs: ``A`` objectness logits and ``4A`` box deltas.

    Args:
        in_channels: ``C`` of the trunk's feature map.
        channels: width of the 3×3 conv (paper: 512 VGG-16, 256 ZF).
        num_anchors: ``A``.
    """

    def __init__(self, *, in_channels: int, channels: int = 512, num_anchors: int = 9) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, kernel_size=1)
        self.num_anchors = int(num_anchors)
        for layer in (self.conv, self.objectness, self.deltas):  # paper: N(0, 0.01²), zero bias
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, C, Hf, Wf)`` -> logits ``(N, T)`` and deltas ``(N, T, 4)`` in anchor order."""
        n, _, hf, wf = features.shape
        x = F.relu(self.conv(features))
        logits = self.objectness(x).permute(0, 2, 3, 1).reshape(n, -1)
        deltas = self.deltas(x).view(n, self.num_anchors, 4, hf, wf)
        deltas = deltas.permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        return logits, deltas


def rpn_loss(logits: Tensor, deltas: Tensor, positive: Tensor, valid: Tensor,
             delta_targets: Tensor, *, beta: float = 1.0 / 9) -> tuple[Tensor, Tensor]:
    """RPN losses over sampled anchors.

    Args:
        logits: ``(N, S)`` objectness logits; deltas ``(N, S, 4)``; delta_targets ``(N, S, 4)``.
        positive, valid: ``(N, S)`` bool — object anchors, and slots actually sampled.

    Returns:
        ``(objectness, box)``: BCE averaged over valid slots; smooth-L1 summed over positive
        slots' 4 coordinates divided by the number of valid slots (0 when nothing was sampled).
    """
    num = valid.sum().clamp(min=1).float()
    w = valid.float()
    obj = F.binary_cross_entropy_with_logits(logits.float(), positive.float(), reduction="none")
    box = F.smooth_l1_loss(deltas.float(), delta_targets.float(), beta=beta, reduction="none").sum(-1)
    return (obj * w).sum() / num, (box * (positive & valid).float()).sum() / num


class RegionProposalNetwork(nn.Module):
    """Anchors + RPN head + training targets + proposal selection (module docstring for details).

    Args:
        head: an :class:`RPNHead`.
        anchor_generator: an :class:`AnchorGenerator` with ``num_anchors == head.num_anchors``.
        fg_iou_thresh, bg_iou_thresh: 0.7 / 0.3.
        batch_size_per_image, positive_fraction: 256 / 0.5.
        pre_nms_top_n_train, pre_nms_top_n_test: boxes kept before NMS (the original code's
            12000 / 6000).
        post_nms_top_n_train, post_nms_top_n_test: proposals kept after NMS (2000 / 300).
        nms_thresh: 0.7.
        min_size: proposals narrower or shorter than this (pixels of the resized image) are
            dropped (the original code used 16 px at the original image scale; default 1e-3 only
            removes degenerate boxes, as torchvision does).
        smooth_l1_beta: 1/9 (original implementation) — see module docstring.
        allowed_border: anchors may cross the image boundary by this many pixels and still be
            used in training (paper: 0).
    """

    def __init__(self, *, head: RPNHead, anchor_generator: AnchorGenerator,
                 fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n_train: int = 12000, pre_nms_top_n_test: int = 6000,
                 post_nms_top_n_train: int = 2000, post_nms_top_n_test: int = 300,
                 nms_thresh: float = 0.7, min_size: float = 1e-3,
                 smooth_l1_beta: float = 1.0 / 9, allowed_border: float = 0.0) -> None:
        super().__init__()
        if anchor_generator.num_anchors != head.num_anchors:
            raise ValueError(f"RegionProposalNetwork: the anchor generator makes {anchor_generator.num_anchors} "
                             f"anchors per location but the head predicts {head.num_anchors}")
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = Matcher(thresholds=(bg_iou_thresh, fg_iou_thresh), labels=(0, -1, 1),
                               allow_low_quality_matches=True)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.pre_nms_top_n = {True: int(pre_nms_top_n_train), False: int(pre_nms_top_n_test)}
        self.post_nms_top_n = {True: int(post_nms_top_n_train), False: int(post_nms_top_n_test)}
        self.nms_thresh = float(nms_thresh)
        self.min_size = float(min_size)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.allowed_border = float(allowed_border)

    def forward(self, features: Tensor, image_hw: Tensor, gt_boxes: Tensor | None = None,
                gt_valid: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Propose regions (and, in training, compute the RPN losses).

        Args:
            features: ``(N, C, Hf, Wf)`` trunk features.
            image_hw: ``(N, 2)`` each image's true (height, width) in pixels, on the device.
            gt_boxes: ``(N, G, 4)`` padded ground truths (training only); gt_valid ``(N, G)`` bool.

        Returns:
            ``proposals`` ``(N, P, 4)`` (detached), ``valid`` ``(N, P)`` bool, and the losses
            ``{"rpn_objectness", "rpn_box"}`` (empty dict in eval mode).
        """
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(features.shape[-2:], features.device)
        proposals, valid = self.propose(anchors, logits.detach(), deltas.detach(), image_hw)
        losses: dict[str, Tensor] = {}
        if self.training:
            if gt_boxes is None or gt_valid is None:
                raise ValueError("RegionProposalNetwork: training needs gt_boxes and gt_valid")
            matches, labels = self.assign_targets(anchors, image_hw, gt_boxes, gt_valid)
            losses = self.losses(anchors, logits, deltas, matches, labels, gt_boxes)
        return proposals, valid, losses

    def assign_targets(self, anchors: Tensor, image_hw: Tensor, gt_boxes: Tensor,
                       gt_valid: Tensor) -> tuple[Tensor, Tensor]:
        """Label anchors: ``(T, 4)`` anchors -> matches ``(N, T)`` int64, labels ``(N, T)`` int8.

        Labels: 1 object, 0 background, -1 ignored (between thresholds or crossing the border).
        """
        n = image_hw.shape[0]
        b = self.allowed_border
        h = image_hw[:, 0:1].to(anchors.dtype)
        w = image_hw[:, 1:2].to(anchors.dtype)
        inside = ((anchors[None, :, 0] >= -b) & (anchors[None, :, 1] >= -b)
                  & (anchors[None, :, 2] <= w + b) & (anchors[None, :, 3] <= h + b))  # (N, T)
        gt_boxes, gt_valid = _at_least_one_slot(gt_boxes, gt_valid)
        iou = batched_box_iou(gt_boxes.to(anchors.dtype), anchors.expand(n, -1, -1))  # (N, G, T)
        # Border-crossing anchors and padded gts cannot match (IoU -1, see Matcher).
        iou = torch.where(gt_valid[:, :, None] & inside[:, None, :], iou, -1.0)
        matches, labels = self.matcher(iou)
        labels = torch.where(inside, labels, torch.full_like(labels, -1))
        return matches, labels

    def losses(self, anchors: Tensor, logits: Tensor, deltas: Tensor, matches: Tensor,
               labels: Tensor, gt_boxes: Tensor) -> dict[str, Tensor]:
        """Sample ``S`` anchors per image and compute ``rpn_objectness`` and ``rpn_box``."""
        index, positive, valid = sample_balanced(labels, num_samples=self.batch_size_per_image,
                                                 positive_fraction=self.positive_fraction)
        gt_boxes, _ = _at_least_one_slot(gt_boxes, None)
        gt_index = matches.gather(1, index)  # (N, S)
        matched = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (N, S, 4)
        sampled_anchors = anchors[index]  # (N, S, 4)
        targets = self.box_coder.encode(matched, sampled_anchors)
        # Negative / empty slots may encode degenerate pairs; they are masked, but keep them finite.
        targets = torch.where(positive[..., None], targets, torch.zeros_like(targets))
        obj, box = rpn_loss(logits.gather(1, index), deltas.gather(1, index[..., None].expand(-1, -1, 4)),
                            positive, valid, targets, beta=self.smooth_l1_beta)
        return {"rpn_objectness": obj, "rpn_box": box}

    def propose(self, anchors: Tensor, logits: Tensor, deltas: Tensor,
                image_hw: Tensor) -> tuple[Tensor, Tensor]:
        """Select proposals: -> boxes ``(N, P, 4)`` sorted by objectness and ``valid`` ``(N, P)``."""
        n, t = logits.shape
        k = min(self.pre_nms_top_n[self.training], t)
        idx = logits.float().topk(k, dim=1).indices  # (N, k), best first
        boxes = self.box_coder.decode(deltas.gather(1, idx[..., None].expand(-1, -1, 4)), anchors[idx])
        boxes = clip_boxes(boxes, image_hw)
        keep = ((boxes[..., 2] - boxes[..., 0]) >= self.min_size) & ((boxes[..., 3] - boxes[..., 1]) >= self.min_size)
        return nms_top_n(boxes, keep, iou_threshold=self.nms_thresh,
                         top_n=self.post_nms_top_n[self.training])


def _at_least_one_slot(gt_boxes: Tensor, gt_valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Give a batch without any ground truth one invalid slot, so ``max`` over ``G`` is defined."""
    if gt_boxes.shape[1] > 0:
        return gt_boxes, gt_valid
    n = gt_boxes.shape[0]
    boxes = gt_boxes.new_zeros((n, 1, 4))
    valid = None if gt_valid is None else torch.zeros((n, 1), dtype=torch.bool, device=gt_boxes.device)
    return boxes, valid
