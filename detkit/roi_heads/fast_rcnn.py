"""The Fast R-CNN RoI head: RoI pooling -> region head -> softmax scores + box regression.

Shape letters: ``N`` images, ``P`` proposals per image (padded; ``proposal_valid`` marks real
ones), ``G`` ground-truth slots per image (padded; ``gt_valid``), ``R`` RoIs sampled per image
(64), ``K`` object classes, ``D`` the region head's output size.

Training (Fast R-CNN §2.3, "hierarchical sampling"): ground-truth boxes are appended to the
proposals; each RoI takes the label of the ground truth it overlaps most; ``R`` RoIs per image
are sampled with up to 25 % foreground (IoU >= 0.5) and the rest background (IoU in
``[bg_iou_thresh_lo, 0.5)``; the paper's 0.1, torchvision uses 0). Images without usable ground
truth contribute background RoIs only. Loss: ``roi_cls`` = log loss over ``K + 1`` classes,
``roi_box`` = ``lambda`` · smooth-L1 (``beta`` 1) of the true class's normalised deltas for
foreground RoIs, both averaged over the sampled RoIs.

Inference: only the valid proposals of all images, packed into one ``(R, 5)`` RoI tensor, go
through RoI pooling and the region head (padded slots cost nothing); then softmax, per-class
decoding, clipping to the image, score threshold (0.05), per-class NMS (0.3) and the top
``detections_per_img`` (100) per image.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detkit.ops.box_coder import BoxCoder, clip_boxes
from detkit.ops.matcher import Matcher, batched_box_iou
from detkit.ops.sampler import sample_balanced
from detkit.roi_heads.box_predictor import FastRCNNPredictor
from detkit.roi_heads.roi_pool import RoIPool


def fast_rcnn_loss(cls_logits: Tensor, box_deltas: Tensor, labels: Tensor, box_targets: Tensor,
                   valid: Tensor, *, beta: float = 1.0, box_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """Fast R-CNN multi-task loss ``L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)``.

    Args:
        cls_logits: ``(M, K+1)``; box_deltas ``(M, 4K)`` class-specific.
        labels: ``(M,)`` int64 in ``0..K`` (0 = background, ``k + 1`` = class ``k``).
        box_targets: ``(M, 4)`` normalised targets ``v`` (used where ``labels > 0``).
        valid: ``(M,)`` bool, RoIs that were actually sampled.

    Returns:
        ``(cls, box)``, each averaged over the valid RoIs (0 when there are none).
    """
    num = valid.sum().clamp(min=1).float()
    w = valid.float()
    ce = F.cross_entropy(cls_logits.float(), labels, reduction="none")
    k = box_deltas.shape[1] // 4
    cls_idx = (labels - 1).clamp(min=0)[:, None, None].expand(-1, 1, 4)
    pred = box_deltas.float().view(-1, k, 4).gather(1, cls_idx).squeeze(1)  # t^u, (M, 4)
    loc = F.smooth_l1_loss(pred, box_targets.float(), beta=beta, reduction="none").sum(-1)
    fg = (valid & (labels > 0)).float()
    return (ce * w).sum() / num, box_weight * (loc * fg).sum() / num


class FastRCNNHead(nn.Module):
    """RoI pooling, region head and predictor, with sampling, losses and post-processing.

    Args:
        roi_pool: :class:`RoIPool` at the backbone's ``roi_size`` and ``1 / stride``.
        box_head: the backbone's region head, ``(R, C, S, S) -> (R, D, ...)``.
        predictor: :class:`FastRCNNPredictor` with ``K`` classes.
        batch_size_per_image: ``R`` (64: 2 images × 64 = 128 RoIs per batch).
        positive_fraction: foreground share (0.25).
        fg_iou_thresh: 0.5; bg_iou_thresh_lo: lower end of the background band (0.1).
        append_gt_boxes: add ground truths to the proposals in training.
        bbox_reg_weights: ``(10, 10, 5, 5)`` = 1 / std (0.1, 0.1, 0.2, 0.2).
        smooth_l1_beta, box_loss_weight: 1 and ``lambda`` = 1.
        score_thresh, nms_thresh, detections_per_img: 0.05, 0.3, 100.
        min_box_size: detections narrower/shorter than this (pixels) are dropped.
    """

    def __init__(self, *, roi_pool: RoIPool, box_head: nn.Module, predictor: FastRCNNPredictor,
                 batch_size_per_image: int = 64, positive_fraction: float = 0.25,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh_lo: float = 0.1,
                 append_gt_boxes: bool = True,
                 bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 smooth_l1_beta: float = 1.0, box_loss_weight: float = 1.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100,
                 min_box_size: float = 1e-2) -> None:
        super().__init__()
        if not 0.0 <= bg_iou_thresh_lo <= fg_iou_thresh:
            raise ValueError(f"FastRCNNHead: need 0 <= bg_iou_thresh_lo ({bg_iou_thresh_lo}) <= "
                             f"fg_iou_thresh ({fg_iou_thresh})")
        self.roi_pool = roi_pool
        self.box_head = box_head
        self.predictor = predictor
        self.num_classes = predictor.num_classes
        self.matcher = Matcher(thresholds=(bg_iou_thresh_lo, fg_iou_thresh), labels=(-1, 0, 1))
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.append_gt_boxes = bool(append_gt_boxes)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_loss_weight = float(box_loss_weight)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.min_box_size = float(min_box_size)

    def forward(self, features: Tensor, proposals: Tensor, proposal_valid: Tensor, image_hw: Tensor,
                gt_boxes: Tensor | None = None, gt_labels: Tensor | None = None,
                gt_valid: Tensor | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: ``{"roi_cls", "roi_box"}``; eval: one ``{"boxes", "scores", "labels"}`` per image.

        Args:
            features: ``(N, C, Hf, Wf)``; proposals ``(N, P, 4)`` image pixels; proposal_valid
                ``(N, P)``; image_hw ``(N, 2)`` true (height, width).
            gt_boxes ``(N, G, 4)``, gt_labels ``(N, G)`` int64 in ``0..K-1``, gt_valid ``(N, G)``:
                training only.
        """
        if self.training:
            if gt_boxes is None or gt_labels is None or gt_valid is None:
                raise ValueError("FastRCNNHead: training needs gt_boxes, gt_labels and gt_valid")
            rois, labels, targets, valid = self.sample(proposals, proposal_valid, gt_boxes, gt_labels, gt_valid)
            logits, deltas = self.predictor(self.box_head(self.roi_pool(features, rois)))
            cls, box = fast_rcnn_loss(logits, deltas, labels.reshape(-1), targets.reshape(-1, 4),
                                      valid.reshape(-1), beta=self.smooth_l1_beta,
                                      box_weight=self.box_loss_weight)
            return {"roi_cls": cls, "roi_box": box}
        return self.detect(features, proposals, proposal_valid, image_hw)

    @torch.no_grad()
    def detect(self, features: Tensor, proposals: Tensor, proposal_valid: Tensor,
               image_hw: Tensor) -> list[dict[str, Tensor]]:
        """Inference on the valid proposals only: -> one ``{"boxes", "scores", "labels"}`` per image.

        Args: as :meth:`forward` (``proposals`` ``(N, P, 4)``, ``proposal_valid`` ``(N, P)``).

        The valid slots of all images are packed into one ``(R, 5)`` RoI tensor (``R`` = number
        of valid proposals), so RoI pooling, the region head and the predictor never run on
        padding (the RPN's unfilled slots, Fast R-CNN's padding to the longest proposal list).
        Packing costs one host sync (``nonzero``), as trimming ``P`` to the largest valid count
        would; but trimming still runs ``N * max_i P_i - sum_i P_i`` padded rows whenever the
        images' counts differ, while the gather that packing adds is ``R x 4`` numbers against
        the region head's ``R x C x S x S`` inputs. Training keeps the fixed ``(N, R)`` slots
        (no sync in the step).
        """
        image_idx, slot = proposal_valid.nonzero(as_tuple=True)  # row-major: image by image
        boxes = proposals[image_idx, slot]  # (R, 4)
        rois = torch.cat((image_idx[:, None].to(boxes.dtype), boxes), dim=1)  # (R, 5)
        if rois.shape[0] == 0:  # nothing to pool; the region head may not accept 0 regions
            k = self.num_classes
            logits, deltas = features.new_zeros((0, k + 1)), features.new_zeros((0, 4 * k))
        else:
            logits, deltas = self.predictor(self.box_head(self.roi_pool(features, rois)))
        return self.postprocess(logits, deltas, rois, image_hw)

    @torch.no_grad()
    def sample(self, proposals: Tensor, proposal_valid: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
               gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Hierarchical sampling of ``R`` RoIs per image.

        Returns:
            rois ``(N, R, 4)``, class labels ``(N, R)`` int64 (0 background, ``k + 1`` class
            ``k``), normalised box targets ``(N, R, 4)`` (0 for background), valid ``(N, R)``.
        """
        n = proposals.shape[0]
        if gt_boxes.shape[1] == 0:  # one invalid slot so that max over G is defined
            gt_boxes = gt_boxes.new_zeros((n, 1, 4))
            gt_labels = gt_labels.new_zeros((n, 1))
            gt_valid = torch.zeros((n, 1), dtype=torch.bool, device=gt_boxes.device)
        gt_boxes = gt_boxes.to(proposals.dtype)
        cands, cand_valid = proposals.detach(), proposal_valid
        if self.append_gt_boxes:
            cands = torch.cat((cands, gt_boxes), dim=1)
            cand_valid = torch.cat((cand_valid, gt_valid), dim=1)
        iou = batched_box_iou(gt_boxes, cands)  # (N, G, P+G)
        iou = torch.where(gt_valid[:, :, None] & cand_valid[:, None, :], iou, -1.0)
        matches, labels = self.matcher(iou)
        # Without objects every real candidate is background; padded slots are never sampled.
        labels = torch.where(~gt_valid.any(dim=1, keepdim=True) & cand_valid, torch.zeros_like(labels), labels)
        labels = torch.where(cand_valid, labels, torch.full_like(labels, -1))
        index, positive, valid = sample_balanced(labels, num_samples=self.batch_size_per_image,
                                                 positive_fraction=self.positive_fraction)
        rois = cands.gather(1, index[..., None].expand(-1, -1, 4))
        gt_index = matches.gather(1, index)
        cls = torch.where(positive, gt_labels.gather(1, gt_index) + 1, torch.zeros_like(gt_index))
        matched = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        targets = torch.where(positive[..., None], self.box_coder.encode(matched, rois),
                              rois.new_zeros(()))
        return rois, cls, targets, valid

    @torch.no_grad()
    def postprocess(self, cls_logits: Tensor, box_deltas: Tensor, rois: Tensor,
                    image_hw: Tensor) -> list[dict[str, Tensor]]:
        """``(R, K+1)`` logits and ``(R, 4K)`` deltas of ``(R, 5)`` RoIs -> detections per image.

        ``rois`` rows are ``(image index, x1, y1, x2, y2)`` in image pixels (RoIPool's row
        format); ``image_hw`` ``(N, 2)`` gives the number of images ``N`` and the clip sizes.
        Each image's dict: ``boxes`` ``(D, 4)``, ``scores`` ``(D,)``, ``labels`` ``(D,)`` int64 in
        ``0..K-1``, ``D <= detections_per_img``, sorted by score.
        """
        n, k = image_hw.shape[0], self.num_classes
        r = rois.shape[0]
        image_idx = rois[:, 0].long()  # (R,)
        probs = F.softmax(cls_logits.float(), dim=-1)[:, 1:]  # (R, K)
        boxes = self.box_coder.decode(box_deltas.view(r, k, 4), rois[:, None, 1:])
        boxes = clip_boxes(boxes, image_hw[image_idx])  # (R, K, 4)
        big = ((boxes[..., 2] - boxes[..., 0]) >= self.min_box_size) & (
            (boxes[..., 3] - boxes[..., 1]) >= self.min_box_size)
        keep = (probs > self.score_thresh) & big
        labels = torch.arange(k, device=probs.device).expand(r, k)
        image = image_idx[:, None].expand(r, k)
        boxes, scores, labels, image = boxes[keep], probs[keep], labels[keep], image[keep]
        # Class offsets per (image, class) pair: one NMS call for all images and classes.
        kept = batched_nms(boxes, scores, image * k + labels, self.nms_thresh)  # descending score
        order = kept[torch.sort(image[kept], stable=True).indices]
        counts = torch.bincount(image[order], minlength=n).tolist()  # the one host sync (output)
        out = []
        for idx in torch.split(order, counts):
            idx = idx[: self.detections_per_img]
            out.append({"boxes": boxes[idx], "scores": scores[idx], "labels": labels[idx]})
        return out
