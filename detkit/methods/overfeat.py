"""OverFeat (Sermanet et al. 2014) as a detector: dense multi-scale windows of a fully
convolutional classifier, offset max pooling, a class-specific box regression network, and
greedy merging of the predicted boxes (Sermanet et al. 2014).

No proposals: every output location of the fully convolutional network is a window of the
network's training input size ``n0`` (227 AlexNet, 224 the others), on a grid with step
``S / s`` pixels (total stride ``S``, last pool stride ``s``, offset pooling on). Scales are
obtained by resizing the image: ``scales`` are the window's side as a **fraction of the image's
shorter side**, so a fraction ``q`` resizes image ``i`` by ``f = n0 / (q * min(h_i, w_i))``
(longer side capped at ``max_size``) and each window covers ``n0 / f`` pixels of the image.

Training (one random scale per step, per-image resize: "images of varied size"): windows are
labelled by IoU with the ground truth — ``>= fg_iou_thresh`` (0.5) the class of the best match,
``< bg_iou_thresh`` (0.3) background, in between ignored; only an image's own windows count (the
ones its grid has alone, centred in the image: not those a wider batch-mate adds over its
padding); ``batch_size_per_image`` windows per image are sampled with up to
``positive_fraction`` positives (balanced like the RPN); loss = softmax log loss over ``K + 1``
classes averaged over the sampled windows + ``box_loss_weight`` x smooth-L1 box regression
averaged over the positive ones (``box_loss_norm="positives"``: OverFeat trains its regressor on
positive windows alone; ``"samples"`` divides by all sampled windows, as Fast R-CNN's
``fast_rcnn_loss``; targets: the R-CNN coding against the window, see
``detkit/overfeat/box_regression.py``). The classification network's last layer is replaced by
a new ``K + 1``-way ``1 x 1`` convolution (index 0 = background); the other layers keep their
(e.g. ImageNet) weights.

Inference: for every scale, softmax scores and decoded class-specific boxes at the image's own
windows; ``(window, class)`` pairs scoring at least ``score_thresh`` (top ``pre_merge_top_n`` per
scale) from all scales are merged per class (``merge="greedy"``; confidences summed or, with
``merge_confidence="max"``, their maximum) or NMS'ed (``merge="nms"``).

Shape letters: ``N`` images, ``K`` classes, ``M`` windows per image at one scale, ``G``
ground-truth slots.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from detkit.data.batch import ImageBatch
from detkit.methods.base import Detector
from detkit.ops.box_coder import clip_boxes
from detkit.ops.matcher import Matcher, batched_box_iou
from detkit.ops.sampler import sample_balanced
from detkit.overfeat.box_regression import REG_WEIGHTS, BoxRegressionNet
from detkit.overfeat.fully_conv import FullyConvNet, fully_convolutional, window_boxes
from detkit.overfeat.merge import merge_detections
from detkit.overfeat.offset_pool import interleave_offsets
from detkit.roi_heads.fast_rcnn import fast_rcnn_loss

__all__ = ["OverFeat", "overfeat"]


class OverFeat(Detector):
    """OverFeat detector following the detector contract (see the module docstring).

    Args:
        net: the fully convolutional classifier; its ``classifier`` must end in a ``K + 1``-way
            ``1 x 1`` convolution.
        regressor: a :class:`BoxRegressionNet` on ``net``'s pooled maps.
        num_classes: ``K``.
        Others: see :func:`overfeat`.

    Training returns ``{"overfeat_cls", "overfeat_box"}``; eval one ``{"boxes", "scores",
    "labels"}`` per image in the batch's image coordinates.
    """

    phases = {"preprocess": ["preprocess"], "trunk": ["dense"], "region_head": ["net.classifier", "regressor"],
              "postprocess": ["detect"], "rois": ["net.classifier"]}
    proposals = "dense windows"

    def __init__(self, *, net: FullyConvNet, regressor: BoxRegressionNet, num_classes: int,
                 scales: Sequence[float], max_size: int = 2000, offset_pooling: bool = True,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.3, batch_size_per_image: int = 128,
                 positive_fraction: float = 0.5, smooth_l1_beta: float = 1.0, box_loss_weight: float = 0.5,
                 box_loss_norm: str = "positives", merge: str = "greedy", merge_threshold: float = 0.5,
                 merge_weighting: str = "mean", merge_confidence: str = "sum",
                 nms_thresh: float = 0.3, score_thresh: float = 0.05, pre_merge_top_n: int = 300,
                 detections_per_img: int = 100, train_on_difficult: bool = True,
                 pixel_mean: Sequence[float] = IMAGENET_MEAN, pixel_std: Sequence[float] = IMAGENET_STD,
                 channels_last: bool = False) -> None:
        super().__init__(num_classes=num_classes, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         train_on_difficult=train_on_difficult, channels_last=channels_last)
        if not scales or any(float(q) <= 0 for q in scales):
            raise ValueError(f"OverFeat: scales must be positive window/shorter-side fractions, got {scales}")
        if box_loss_norm not in ("positives", "samples"):
            raise ValueError(f"OverFeat: box_loss_norm must be 'positives' or 'samples', got {box_loss_norm!r}")
        if merge not in ("greedy", "nms"):
            raise ValueError(f"OverFeat: merge must be 'greedy' or 'nms', got {merge!r}")
        if merge_confidence not in ("sum", "max"):
            raise ValueError(f"OverFeat: merge_confidence must be 'sum' or 'max', got {merge_confidence!r}")
        if not 0 <= bg_iou_thresh <= fg_iou_thresh <= 1:
            raise ValueError(f"OverFeat: need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got "
                             f"{bg_iou_thresh}, {fg_iou_thresh}")
        if regressor.num_classes != num_classes or regressor.window != net.window:
            raise ValueError("OverFeat: the regressor must predict num_classes boxes over net.window windows")
        self.net, self.regressor = net, regressor
        self.scales = tuple(float(q) for q in scales)
        self.max_size = int(max_size)
        self.offset_pooling = bool(offset_pooling)
        self.matcher = Matcher(thresholds=(bg_iou_thresh, fg_iou_thresh), labels=(0, -1, 1))
        self.batch_size_per_image, self.positive_fraction = int(batch_size_per_image), float(positive_fraction)
        self.smooth_l1_beta, self.box_loss_weight = float(smooth_l1_beta), float(box_loss_weight)
        self.box_loss_norm = box_loss_norm
        self.merge, self.merge_threshold, self.merge_weighting = merge, float(merge_threshold), merge_weighting
        self.merge_confidence = merge_confidence
        self.nms_thresh, self.score_thresh = float(nms_thresh), float(score_thresh)
        self.pre_merge_top_n, self.detections_per_img = int(pre_merge_top_n), int(detections_per_img)
        self._finish_init()

    def class_specific(self) -> list[str]:
        """The classifier's last (K + 1)-way convolution and the regression net's per-class output."""
        last = [n for n, m in self.net.classifier.named_children() if isinstance(m, nn.Conv2d)][-1]
        return [f"net.classifier.{last}.", "regressor.deltas."]

    def forward(self, batch: ImageBatch, targets: list[dict] | None = None):
        images, image_hw = self.preprocess(batch)
        if self.training:
            gt_boxes, gt_labels, gt_valid = self.prepare_targets(targets, len(batch))
            q = random.choice(self.scales)  # one scale per step; seeded by the trainer
            scores, deltas, windows, own = self.dense(images, image_hw, q)
            return self.losses(scores, deltas, windows, own, gt_boxes, gt_labels, gt_valid)
        return self.detect(images, image_hw)

    # ------------------------------------------------------------------ dense evaluation
    def resize_factors(self, image_hw: Tensor, q: float) -> list[float]:
        """Per-image resize factor for window fraction ``q`` (longer side capped at max_size)."""
        n0 = self.net.input_size
        out = []
        for h, w in image_hw.tolist():
            f = n0 / (q * max(min(h, w), 1))
            out.append(min(f, self.max_size / max(h, w, 1)))
        return out

    def dense(self, images: Tensor, image_hw: Tensor, q: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One scale: -> class logits ``(N, M, K+1)``, deltas ``(N, M, 4K)``, windows ``(N, M, 4)``
        in the batch's image coordinates, and ``own`` ``(N, M)`` bool: the image's own windows.

        The images are resized separately and padded to one tensor, so the grid ``M`` is the
        largest image's. An image's own windows are those its grid would have alone (padded up
        to one window) whose centre lies in the image: training labels and detections use only
        those, so what an image contributes does not depend on the other images of its batch.
        """
        factors = self.resize_factors(image_hw, q)
        resized = []
        for img, (h, w), f in zip(images, image_hw.tolist(), factors):
            size = (max(1, round(h * f)), max(1, round(w * f)))
            resized.append(F.interpolate(img[None, :, :h, :w], size=size, mode="bilinear", align_corners=False,
                                         antialias=f < 1)[0])
        n0 = self.net.input_size
        # Pad (with 0 = the mean colour) to at least one window so every image has outputs.
        hmax = max(n0, max(r.shape[-2] for r in resized))
        wmax = max(n0, max(r.shape[-1] for r in resized))
        x = torch.stack([F.pad(r, (0, wmax - r.shape[-1], 0, hmax - r.shape[-2])) for r in resized])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pooled = self.net.pooled(x, offsets=self.offset_pooling)
        logits, deltas = self.net.classifier(pooled), self.regressor(pooled)
        if self.offset_pooling:
            s = self.net.pool_stride
            logits = interleave_offsets(logits, s)
            deltas = interleave_offsets(deltas, s)
        n, _, gh, gw = logits.shape
        grid = window_boxes(gh, gw, step=self.net.grid_step(self.offset_pooling), window=n0, device=x.device)
        scale = torch.tensor(factors, dtype=torch.float32, device=x.device)[:, None, None]
        windows = grid[None] / scale  # (N, M, 4) back in the batch's coordinates
        rows = torch.arange(gh, device=x.device)[:, None]
        cols = torch.arange(gw, device=x.device)[None, :]
        own = torch.stack([((rows < self.net.grid_side(max(n0, r.shape[-2]), self.offset_pooling))
                            & (cols < self.net.grid_side(max(n0, r.shape[-1]), self.offset_pooling))).reshape(-1)
                           for r in resized])
        own &= self.centre_inside(windows, image_hw)
        return (logits.flatten(2).transpose(1, 2), deltas.flatten(2).transpose(1, 2), windows, own)

    @staticmethod
    def centre_inside(windows: Tensor, image_hw: Tensor) -> Tensor:
        """``(N, M)`` bool: window centres inside their image (not on the padding)."""
        centre = (windows[..., :2] + windows[..., 2:]) / 2
        return (centre[..., 0] < image_hw[:, 1:2]) & (centre[..., 1] < image_hw[:, 0:1])

    # ------------------------------------------------------------------ training
    def losses(self, logits: Tensor, deltas: Tensor, windows: Tensor, own: Tensor, gt_boxes: Tensor,
               gt_labels: Tensor, gt_valid: Tensor) -> dict[str, Tensor]:
        n, m, _ = windows.shape
        if gt_boxes.shape[1] == 0:  # no objects in the batch: one invalid slot (all background)
            gt_boxes = gt_boxes.new_zeros((n, 1, 4))
            gt_labels = gt_labels.new_zeros((n, 1))
            gt_valid = gt_valid.new_zeros((n, 1))
        iou = batched_box_iou(gt_boxes, windows)
        iou = torch.where(gt_valid[:, :, None], iou, -1.0)
        matches, labels = self.matcher(iou)
        labels = torch.where(own, labels, torch.full_like(labels, -1))
        index, positive, valid = sample_balanced(labels, num_samples=self.batch_size_per_image,
                                                 positive_fraction=self.positive_fraction)
        gt_idx = matches.gather(1, index)
        cls = torch.where(positive, gt_labels.gather(1, gt_idx) + 1, 0)
        win = windows.gather(1, index[..., None].expand(-1, -1, 4))
        target_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))
        targets = torch.where(positive[..., None], self.regressor.encode(target_boxes, win), 0.0)
        sel_logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
        sel_deltas = deltas.gather(1, index[..., None].expand(-1, -1, deltas.shape[-1]))
        loss_cls, loss_box = fast_rcnn_loss(sel_logits.reshape(-1, logits.shape[-1]),
                                            sel_deltas.reshape(-1, deltas.shape[-1]), cls.reshape(-1),
                                            targets.reshape(-1, 4), valid.reshape(-1),
                                            beta=self.smooth_l1_beta, box_weight=self.box_loss_weight)
        if self.box_loss_norm == "positives":
            # fast_rcnn_loss averages over all sampled windows; OverFeat trains its regressor on the
            # positive windows alone, and the positive share swings ~10x between scales (a coarse
            # scale has a few windows, mostly positive; a fine one hundreds, mostly background).
            # Averaging over the positives gives every positive the same weight at every scale.
            pos = (valid & positive).sum().clamp(min=1).float()
            loss_box = loss_box * valid.sum().clamp(min=1).float() / pos
        return {"overfeat_cls": loss_cls, "overfeat_box": loss_box}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def candidates(self, images: Tensor, image_hw: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """What the merge sees: per image, ``(boxes (D, 4), scores (D,), labels (D,))`` of the
        ``(window, class)`` pairs scoring ``>= score_thresh`` (top ``pre_merge_top_n`` per scale)
        at the image's own windows, over all scales; boxes decoded, clipped, non-empty."""
        n = images.shape[0]
        cand: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(n)]
        k = self.num_classes
        for q in self.scales:
            logits, deltas, windows, own = self.dense(images, image_hw, q)
            probs = logits.float().softmax(-1)[..., 1:]                        # (N, M, K)
            own = own[..., None].expand(-1, -1, k)
            boxes = clip_boxes(self.regressor.decode(deltas, windows), image_hw)  # (N, M, K, 4)
            for i in range(n):
                s = probs[i].reshape(-1)
                keep = torch.nonzero((s >= self.score_thresh) & own[i].reshape(-1)).squeeze(1)
                keep = keep[torch.argsort(s[keep], descending=True)[:self.pre_merge_top_n]]
                cand[i].append((boxes[i].reshape(-1, 4)[keep], s[keep], keep % k))
        out = []
        for parts in cand:
            b, s, lab = (torch.cat([c[j] for c in parts]) for j in range(3))
            ok = ((b[:, 2:] - b[:, :2]) > 0).all(dim=1)
            out.append((b[ok], s[ok], lab[ok]))
        return out

    def merge_kwargs(self) -> dict:
        """This model's post-processing settings, as :func:`merge_detections` keywords."""
        return dict(method=self.merge, merge_threshold=self.merge_threshold, nms_thresh=self.nms_thresh,
                    weighting=self.merge_weighting, confidence=self.merge_confidence,
                    max_detections=self.detections_per_img)

    @torch.no_grad()
    def detect(self, images: Tensor, image_hw: Tensor) -> list[dict[str, Tensor]]:
        out = []
        for b, s, lab in self.candidates(images, image_hw):
            b, s, lab = merge_detections(b, s, lab, **self.merge_kwargs())
            out.append({"boxes": b, "scores": s, "labels": lab})
        return out

def overfeat(*, classifier: nn.Module, num_classes: int, backbone: nn.Module | None = None,
             input_size: int | None = None,
             scales: Sequence[float] = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18), max_size: int = 2000,
             offset_pooling: bool = True, reg_channels: Sequence[int] | None = None,
             bbox_reg_weights: Sequence[float] = REG_WEIGHTS,
             fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.3, batch_size_per_image: int = 128,
             positive_fraction: float = 0.5, smooth_l1_beta: float = 1.0, box_loss_weight: float = 0.5,
             box_loss_norm: str = "positives", merge: str = "greedy", merge_threshold: float = 0.5,
             merge_weighting: str = "mean", merge_confidence: str = "sum",
             nms_thresh: float = 0.3, score_thresh: float = 0.05, pre_merge_top_n: int = 300,
             detections_per_img: int = 100, train_on_difficult: bool = True,
             channels_last: bool = False) -> OverFeat:
    """Build OverFeat from a classification network; a Hydra ``_target_``.

    Args:
        classifier: the whole classification network (``configs/backbone/*.yaml``'s ``classifier``
            node, e.g. ``alexnet(width=...)``); made fully convolutional with its weights, its last
            layer replaced by a ``K + 1``-way ``1 x 1`` convolution.
        backbone: the detection :class:`Backbone` of the same config; only its ``input_size`` is
            used (the training input side ``n0``); ``input_size`` overrides it.
        scales: window side as a fraction of the image's shorter side, one dense pass each (six as
            in the paper; the paper's 245..461-pixel images for a 221 window are fractions
            0.9..0.48 — smaller ones here because VOC-style objects are smaller than ImageNet's).
        reg_channels: hidden widths of the regression network; default ``(D, D // 4)`` with ``D``
            the classifier's first hidden width (fc6: 4096 -> (4096, 1024) as in the paper) or,
            for GAP networks, the pooled map's channels.
        Others: see the module docstring and :class:`OverFeat`.
    """
    if input_size is None and backbone is not None:
        input_size = int(backbone.input_size)
    net = fully_convolutional(classifier, input_size=input_size)
    convs = [m for m in net.classifier.modules() if isinstance(m, nn.Conv2d)]
    last = convs[-1]
    new = nn.Conv2d(last.in_channels, num_classes + 1, 1)
    nn.init.normal_(new.weight, std=0.01)
    nn.init.zeros_(new.bias)
    layers = list(net.classifier)
    layers[layers.index(last)] = new
    net.classifier = nn.Sequential(*layers)
    if reg_channels is None:
        hidden = convs[0].out_channels if len(convs) > 1 else net.out_channels
        reg_channels = (hidden, max(hidden // 4, 1))
    regressor = BoxRegressionNet(in_channels=net.out_channels, window=net.window, num_classes=num_classes,
                                 channels=reg_channels, weights=bbox_reg_weights)
    return OverFeat(net=net, regressor=regressor, num_classes=num_classes, scales=scales, max_size=max_size,
                    offset_pooling=offset_pooling, fg_iou_thresh=fg_iou_thresh, bg_iou_thresh=bg_iou_thresh,
                    batch_size_per_image=batch_size_per_image, positive_fraction=positive_fraction,
                    smooth_l1_beta=smooth_l1_beta, box_loss_weight=box_loss_weight,
                    box_loss_norm=box_loss_norm, merge=merge,
                    merge_threshold=merge_threshold, merge_weighting=merge_weighting,
                    merge_confidence=merge_confidence, nms_thresh=nms_thresh,
                    score_thresh=score_thresh, pre_merge_top_n=pre_merge_top_n,
                    detections_per_img=detections_per_img, train_on_difficult=train_on_difficult,
                    channels_last=channels_last)
