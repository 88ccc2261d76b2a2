"""R-CNN (Girshick et al. 2014): selective-search proposals, each warped with 16 px of context to
the network's input and run through the whole classification network, one linear SVM per class,
class-specific box regression, per-class NMS 0.3.

``RegionDetector`` holds what R-CNN and SPPNet share (SPPNet differs only in how a proposal's
features are computed, ``detkit.methods.sppnet``):

* proposals: ``model(batch, targets, proposals=[(P_i, 4)])`` in the batch's (resized) image pixels,
  else ``target["proposals"]`` (training), else selective search on the fly (so
  ``tools/infer.py`` works on bare images);
* training (stage 1, "fine-tuning"): proposals and ground truth with IoU >= 0.5 with a ground truth
  take its class; the others are background when their best IoU is >= ``bg_iou_thresh_lo`` and
  left out otherwise (R-CNN: 0, "the rest background"; SPPNet: 0.1, negatives in [0.1, 0.5));
  128 regions per step (32 positives + 96 background, R-CNN §2.3) feed a softmax over ``K + 1``
  (``cls_score``, the new "fc8");
* test: features ``fc7`` (the region head's output) scored by the SVMs (``scorer="svm"``, buffers
  ``svm_weight (K, D)``, ``svm_bias (K,)``, ``svm_scale``) or by the softmax; boxes refined by
  ``bbox_regressor`` (``BoxRegressors`` on ``pool5`` features; zero weights = unchanged boxes);
  per-class NMS. The SVMs and regressors are fitted by ``detkit.engine.stages``.

R-CNN's "pool5" here is the backbone's trunk map of the warped region max-pooled to
``roi_size x roi_size`` (adaptive max pooling). For VGG-16 (224 -> 14 x 14 -> 7 x 7) that is
exactly pool5; AlexNet's detection trunk uses "same" padding, so 227 px give 15 x 15 cells pooled
to 6 x 6 instead of the classifier's 13 x 13 -> 6 x 6. This keeps R-CNN on the ``Backbone``
contract, so ``build_model`` and every backbone (ResNet's conv5 head included) work unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from detkit.backbones.base import Backbone
from detkit.data.batch import ImageBatch
from detkit.methods.detector import TwoStageDetector
from detkit.ops.sampler import sample_balanced
from detkit.proposals.selective_search import selective_search
from detkit.rcnn.bbox_regression import BoxRegressors
from detkit.rcnn.region_batches import (default_memory_mb, peak_bytes_per_region, region_spans,
                                        regions_per_batch)
from detkit.rcnn.warp import warp_regions


class RegionDetector(TwoStageDetector):
    """Proposals -> per-region features -> SVM/softmax scores -> box regression -> NMS.

    Subclasses implement ``region_features``. Args (keyword-only):
        backbone, num_classes, train_on_difficult, channels_last: see ``TwoStageDetector``.
        feature_dim: ``D`` of the scored features (fc7); pool_dim: of the box-regression features.
        scorer: ``"svm"`` (R-CNN) or ``"softmax"`` (the fine-tuned ``cls_score``).
        score_thresh: drop detections scoring below (SVM margin units, or probability).
        nms_thresh: per-class NMS IoU (R-CNN: 0.3). detections_per_img: keep the best this many.
        fg_iou_thresh: fine-tuning positive IoU (0.5). bg_iou_thresh_lo: background regions need a
            best IoU >= this (R-CNN 0.0: every non-positive region; SPPNet 0.1); regions below it
            are not used for fine-tuning. batch_regions, positive_fraction: regions per step and
            the positive share (128, 0.25: 32 + 96).
        chunk_size: regions per forward pass at test time and in feature extraction (bounds
            memory); ``None``: the subclass's default (R-CNN: from ``region_memory_mb``; SPPNet: all
            of an image's boxes at once).
        ss_mode, ss_max_side, ss_max_proposals, ss_base_k, ss_inc_k, ss_sigma: selective search
            (``detkit.proposals.selective_search``) when no proposals are given.
    """

    def class_specific(self) -> list[str]:
        """The fine-tuning softmax, the SVMs (and their feature scale) and the box regressors."""
        return ["cls_score.", "svm_weight", "svm_bias", "svm_scale", "bbox_regressor."]

    # R-CNN: no shared trunk pass, the whole network runs per warped region.
    phases = {"preprocess": ["preprocess"], "region_head": ["region_features"], "postprocess": ["detect"],
              "rois": ["backbone.region_head"]}
    proposals = "given"

    def __init__(self, *, backbone: Backbone, num_classes: int, feature_dim: int, pool_dim: int,
                 scorer: str = "svm", score_thresh: float = -1.0, nms_thresh: float = 0.3,
                 detections_per_img: int = 100, fg_iou_thresh: float = 0.5, bg_iou_thresh_lo: float = 0.0,
                 batch_regions: int = 128, positive_fraction: float = 0.25, chunk_size: int | None = 256,
                 ss_mode: str = "fast", ss_max_side: int | None = 500, ss_max_proposals: int | None = None,
                 ss_base_k: int = 150, ss_inc_k: int = 150, ss_sigma: float = 0.8,
                 train_on_difficult: bool = True, channels_last: bool = False) -> None:
        super().__init__(backbone=backbone, num_classes=num_classes,
                         train_on_difficult=train_on_difficult, channels_last=channels_last)
        if scorer not in ("svm", "softmax"):
            raise ValueError(f"{type(self).__name__}: scorer must be 'svm' or 'softmax', got {scorer!r}")
        if (chunk_size is not None and chunk_size < 1) or batch_regions < 1:
            raise ValueError(f"{type(self).__name__}: chunk_size ({chunk_size}) and batch_regions "
                             f"({batch_regions}) must be >= 1")
        self.scorer, self.score_thresh, self.nms_thresh = scorer, float(score_thresh), float(nms_thresh)
        self.detections_per_img, self.fg_iou_thresh = int(detections_per_img), float(fg_iou_thresh)
        if not 0.0 <= bg_iou_thresh_lo <= fg_iou_thresh:
            raise ValueError(f"{type(self).__name__}: bg_iou_thresh_lo must be in [0, fg_iou_thresh={fg_iou_thresh}], "
                             f"got {bg_iou_thresh_lo}")
        self.bg_iou_thresh_lo = float(bg_iou_thresh_lo)
        self.batch_regions, self.positive_fraction = int(batch_regions), float(positive_fraction)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.ss_options = {"mode": ss_mode, "max_side": ss_max_side, "max_proposals": ss_max_proposals,
                           "base_k": int(ss_base_k), "inc_k": int(ss_inc_k), "sigma": float(ss_sigma)}
        self.feature_dim, self.pool_dim = int(feature_dim), int(pool_dim)
        k = self.num_classes
        self.cls_score = nn.Linear(self.feature_dim, k + 1)  # fine-tuning softmax, background = K
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.register_buffer("svm_weight", torch.zeros(k, self.feature_dim))
        self.register_buffer("svm_bias", torch.zeros(k))
        self.register_buffer("svm_scale", torch.tensor(1.0))  # R-CNN's feature scaling (mean norm 20)
        self.bbox_regressor = BoxRegressors(num_classes=k, feature_dim=self.pool_dim)

    # ------------------------------------------------------------------ features
    def region_features(self, images: Tensor, image_hw: Tensor, boxes: Sequence[Tensor], *,
                        pool: bool = False) -> tuple[Tensor, Tensor | None]:
        """``N`` images' ``(P_i, 4)`` boxes -> fc7 ``(sum P_i, D)`` and, with ``pool``, the
        box-regression features ``(sum P_i, pool_dim)`` (``None`` otherwise), image by image in
        the order given; at test time computed in batches of regions to bound memory."""
        raise NotImplementedError

    def scores(self, fc: Tensor) -> Tensor:
        """``(R, D)`` fc7 -> ``(R, K)`` class scores: SVM margins or softmax probabilities."""
        if self.scorer == "svm":
            return (fc.float() * self.svm_scale) @ self.svm_weight.T + self.svm_bias
        return F.softmax(self.cls_score(fc).float(), dim=1)[:, :-1]

    # ------------------------------------------------------------------ proposals
    def gather_proposals(self, batch: ImageBatch, image_hw: Tensor, targets: list[dict] | None,
                         proposals: Sequence[Tensor] | None) -> list[Tensor]:
        """One clipped ``(P_i, 4)`` float tensor per image (module docstring for the sources)."""
        n = len(batch.image_sizes)
        if proposals is None and targets is not None and all("proposals" in t for t in targets):
            proposals = [t["proposals"] for t in targets]
        if proposals is None:
            proposals = [self._selective_search(batch.tensor[i, :, :h, :w])
                         for i, (h, w) in enumerate(batch.image_sizes)]
        if len(proposals) != n:
            raise ValueError(f"{type(self).__name__}: {len(proposals)} proposal tensors for {n} images")
        out = []
        for i, p in enumerate(proposals):
            p = torch.as_tensor(p, dtype=torch.float32, device=image_hw.device)
            if p.numel() == 0:
                p = p.reshape(0, 4)
            if p.dim() != 2 or p.shape[1] != 4:
                raise ValueError(f"{type(self).__name__}: proposals for image {i} must be (P, 4), got {tuple(p.shape)}")
            h, w = (float(v) for v in image_hw[i])
            p = torch.stack((p[:, 0].clamp(0, w), p[:, 1].clamp(0, h), p[:, 2].clamp(0, w),
                             p[:, 3].clamp(0, h)), dim=1)
            out.append(p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])])  # empty boxes have no warp
        return out

    def _selective_search(self, image: Tensor) -> Tensor:
        """Selective search on one uint8 ``(3, h, w)`` image (CPU work: OpenCV)."""
        rgb = image.permute(1, 2, 0).contiguous().cpu().numpy()
        return torch.from_numpy(selective_search(rgb, **self.ss_options))

    # ------------------------------------------------------------------ forward
    def forward(self, batch: ImageBatch, targets: list[dict] | None = None,
                proposals: Sequence[Tensor] | None = None):
        """Train: ``{"loss_cls"}`` (fine-tuning); eval: one ``{"boxes", "scores", "labels"}`` per image."""
        images, image_hw = self.preprocess(batch)
        props = self.gather_proposals(batch, image_hw, targets, proposals)
        if self.training:
            return self.finetune_loss(images, image_hw, props, targets)
        return self.detect(images, image_hw, props)

    def label_regions(self, props: Sequence[Tensor], gt_boxes: Tensor, gt_labels: Tensor,
                      gt_valid: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Fine-tuning regions (ground truth + proposals, ``(G_i + P_i, 4)``) and their labels per image.

        Labels ``(G_i + P_i,)`` int64: the class ``0..K-1`` of the ground truth with the best IoU
        when that IoU is >= ``fg_iou_thresh``; ``K`` (background) when the best IoU is below it but
        >= ``bg_iou_thresh_lo``; ``-1`` (not used) below ``bg_iou_thresh_lo``. With no ground truth
        every region's best IoU is 0.
        """
        boxes, labels = [], []
        for i, p in enumerate(props):
            g, lab = gt_boxes[i][gt_valid[i]], gt_labels[i][gt_valid[i]]
            b = torch.cat((g, p))
            y = torch.full((len(b),), self.num_classes, dtype=torch.long, device=b.device)
            best = torch.zeros(len(b), device=b.device)
            if len(g):
                best, arg = box_iou(b, g).max(dim=1)
                fg = best >= self.fg_iou_thresh
                y[fg] = lab[arg[fg]]
            y[best < self.bg_iou_thresh_lo] = -1  # SPPNet: below 0.1 neither object nor background
            boxes.append(b)
            labels.append(y)
        return boxes, labels

    def finetune_loss(self, images: Tensor, image_hw: Tensor, props: Sequence[Tensor],
                      targets: list[dict] | None) -> dict[str, Tensor]:
        """Softmax log loss over ``K + 1`` on 32 positive + 96 background regions (R-CNN §2.3)."""
        gt_boxes, gt_labels, gt_valid = self.prepare_targets(targets, images.shape[0])
        boxes, labels = self.label_regions(props, gt_boxes, gt_labels, gt_valid)
        flat = torch.cat(labels)
        img = torch.cat([torch.full((len(b),), i, device=flat.device) for i, b in enumerate(boxes)])
        # sampler labels: 1 object, 0 background, -1 left out (below bg_iou_thresh_lo)
        roles = torch.where(flat < 0, -1, (flat < self.num_classes).long())
        idx, _, valid = sample_balanced(roles[None], num_samples=self.batch_regions,
                                        positive_fraction=self.positive_fraction)
        idx = idx[0][valid[0]]
        if len(idx) == 0:
            raise ValueError(f"{type(self).__name__}: no regions to fine-tune on (no ground truth in the batch, "
                             "and no proposals with IoU >= bg_iou_thresh_lo)")
        all_boxes = torch.cat(boxes)
        sel = [all_boxes[idx[img[idx] == i]] for i in range(len(boxes))]
        order = torch.cat([idx[img[idx] == i] for i in range(len(boxes))])
        fc, _ = self.region_features(images, image_hw, sel)
        return {"loss_cls": F.cross_entropy(self.cls_score(fc).float(), flat[order])}

    @torch.no_grad()
    def detect(self, images: Tensor, image_hw: Tensor, props: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Score every proposal with every class, regress, per-class NMS (R-CNN test time)."""
        regress = bool(self.bbox_regressor.num_examples.sum() > 0)
        results = []
        for i, p in enumerate(props):
            k = self.num_classes
            if len(p) == 0:
                results.append(self._empty(images.device))
                continue
            fc, pool = self.region_features(images[i:i + 1], image_hw[i:i + 1], [p], pool=regress)
            scores = self.scores(fc)  # (P, K)
            if regress:
                boxes = self.bbox_regressor(pool, p)  # (P, K, 4)
            else:
                boxes = p[:, None, :].expand(-1, k, -1)
            h, w = (float(v) for v in image_hw[i])
            boxes = torch.stack((boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                                 boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)), dim=-1)
            labels = torch.arange(k, device=p.device).expand(len(p), k)
            boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
            keep = (scores >= self.score_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes.float(), scores.float(), labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep].float(), "scores": scores[keep].float(), "labels": labels[keep]})
        return results

    @staticmethod
    def _empty(device) -> dict[str, Tensor]:
        return {"boxes": torch.zeros(0, 4, device=device), "scores": torch.zeros(0, device=device),
                "labels": torch.zeros(0, dtype=torch.long, device=device)}


class RCNN(RegionDetector):
    """R-CNN: warp each proposal (context ``p = 16``) to ``backbone.input_size`` and run the whole
    network on it: trunk -> max pool to ``roi_size`` ("pool5", ``C * roi_size^2``) -> region head
    ("fc7", ``head_channels``).

    Args (keyword-only, besides ``RegionDetector``'s):
        context: ``p``, warped pixels of context around each box.
        chunk_size: regions per forward pass at test time and in feature extraction; ``None``
            (default): as many as ``region_memory_mb`` holds, from the network's own activation
            size (``detkit.rcnn.region_batches``). Batches run across images.
        region_memory_mb: memory budget of one batch of warped regions at the peak of a forward
            pass (float32 activations; bf16 autocast halves them); ``None``: 64 MB on a CPU (small
            batches run faster there), 2048 MB on a GPU (``detkit.rcnn.region_batches``).
    In fine-tuning (train mode with autograd) the step's regions go through in one pass, so that
    batch norm sees them together; ``batch_regions`` bounds that pass.
    """

    # --fast leaves the fc layers in float: on R-CNN int8 measured 7 % slower (a small share of a
    # network run on whole warped regions, and each small batch pays its inputs' quantisation).
    fast_int8 = False
    # The trunk runs on warped 227x227 regions, not whole images: an int8 trunk calibrated on
    # whole images would fit the wrong activations (detkit.compression.quantize_trunk refuses).
    trunk_on_regions = True

    def __init__(self, *, backbone: Backbone, num_classes: int, context: int = 16,
                 chunk_size: int | None = None, region_memory_mb: float | None = None, **kwargs) -> None:
        pool_dim = backbone.out_channels * backbone.roi_size ** 2
        super().__init__(backbone=backbone, num_classes=num_classes, feature_dim=backbone.head_channels,
                         pool_dim=pool_dim, chunk_size=chunk_size, **kwargs)
        if region_memory_mb is not None and region_memory_mb <= 0:
            raise ValueError(f"{type(self).__name__}: region_memory_mb must be > 0, got {region_memory_mb}")
        self.context, self.input_size = int(context), int(backbone.input_size)
        self.region_memory_mb = None if region_memory_mb is None else float(region_memory_mb)
        self._region_bytes: dict[tuple[str, torch.dtype], int] = {}  # measured once per device and dtype
        self._finish_init()

    def warp(self, images: Tensor, image_hw: Tensor, boxes: Sequence[Tensor]) -> Tensor:
        """``(sum P_i, 3, S, S)`` warped regions, ``S = backbone.input_size`` (batched RoI Align)."""
        sizes = [(int(h), int(w)) for h, w in image_hw.tolist()]
        return warp_regions(images, list(boxes), output_size=self.input_size, context=self.context,
                            image_sizes=sizes)

    def network(self) -> nn.Module:
        """The per-region network, warped region ``(R, 3, S, S)`` -> fc7 ``(R, D)`` (shares the
        backbone's modules)."""
        r = self.backbone.roi_size
        return nn.Sequential(self.backbone.trunk, nn.AdaptiveMaxPool2d((r, r)), self.backbone.region_head)

    def regions_per_batch(self, device: torch.device) -> int:
        """``chunk_size``, or the number of warped regions the memory budget holds on ``device``."""
        if self.chunk_size is not None:
            return self.chunk_size
        dtype = next(self.backbone.trunk.parameters()).dtype
        key = (str(device), dtype if dtype.is_floating_point else torch.float32)
        if key not in self._region_bytes:
            self._region_bytes[key] = peak_bytes_per_region(self.network(), input_size=self.input_size,
                                                            device=device, dtype=key[1])
        budget = self.region_memory_mb or default_memory_mb(device)
        return regions_per_batch(self._region_bytes[key], budget)

    def region_features(self, images, image_hw, boxes, *, pool=False):
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            empty = images.new_zeros(0, self.feature_dim)
            return empty, (images.new_zeros(0, self.pool_dim) if pool else None)
        if self.training and torch.is_grad_enabled():
            batch = sum(counts)  # fine-tuning: one pass (class docstring)
        else:
            batch = self.regions_per_batch(images.device)
        fcs, pools, r = [], [], self.backbone.roi_size
        for spans in region_spans(counts, batch):
            first, last = spans[0][0], spans[-1][0] + 1
            parts = [boxes[i][:0] for i in range(first, last)]  # images of this batch, regions sliced
            for i, start, end in spans:
                parts[i - first] = boxes[i][start:end]
            x = self.warp(images[first:last], image_hw[first:last], parts)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pool5 = F.adaptive_max_pool2d(self.backbone.trunk(x), (r, r))
            fcs.append(self.backbone.region_head(pool5))
            if pool:
                pools.append(pool5.flatten(1))
        return torch.cat(fcs), (torch.cat(pools) if pool else None)
