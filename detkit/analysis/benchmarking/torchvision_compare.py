"""torchvision's ``FasterRCNN`` built as the same network as a detkit Faster R-CNN, for timing.

:func:`build_torchvision_twin` copies a detkit :class:`~detkit.methods.faster_rcnn.FasterRCNN`
into ``torchvision.models.detection.FasterRCNN``:

* **trunk**: a copy of ``backbone.trunk`` (same layers and weights), wrapped to carry
  ``out_channels`` (torchvision's backbone contract), with torch's own layers where detkit has a
  faster equal one (local response normalisation: ``torch.nn.LocalResponseNorm``, as a torchvision
  user builds an AlexNet-style trunk; :func:`torch_trunk`);
* **RPN**: torchvision's ``AnchorGenerator`` with detkit's sizes and ratios (one feature map),
  a torchvision ``RPNHead`` whose 3x3 conv has detkit's width, with detkit's weights copied in
  (anchor channels reordered: detkit orders size-major, torchvision ratio-major); the same
  pre/post-NMS top-n for training and test, NMS threshold, IoU thresholds and sampling;
* **RoI pooling**: ``MultiScaleRoIAlign(["0"], roi_size, sampling_ratio=2)`` — torchvision has
  only RoI *Align* (``aligned=False``); detkit's default is the paper's RoI max pooling, so for
  the fairest comparison benchmark detkit with ``roi_pool_mode=align`` as well;
* **region head**: a copy of ``backbone.region_head`` (flattened output, as ``TwoMLPHead``), and a
  ``FastRCNNPredictor`` with detkit's weights (torchvision's extra background regressor is 0);
* the same sampling counts (RoIs per image, foreground fraction, IoU 0.5), box coder weights
  (10, 10, 5, 5), score threshold, NMS threshold and detections per image. torchvision's
  background band is IoU in [0, 0.5); detkit's lower end (0.1 by default) cannot be set there.
* **transform**: ``min_size`` / ``max_size`` set to the benchmark's input height/width so the
  scale is exactly 1; torchvision still runs its bilinear ``interpolate`` at scale 1 (counted in
  its ``preprocess`` phase, as every torchvision user pays it), and pads to 32 like ImageBatch.

:class:`TorchvisionDetector` adapts the result to detkit's detector contract (``ImageBatch`` in,
labels ``0..K-1``), so one benchmark loop drives both; :data:`TORCHVISION_PHASES` maps its phases.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from detkit.analysis.benchmarking.benchmark import BenchmarkError
from detkit.backbones.lrn import LocalResponseNorm
from detkit.data.batch import ImageBatch

# Phase -> dotted paths on a TorchvisionDetector (see detkit.analysis.benchmarking.benchmark.PhaseTimer).
TORCHVISION_PHASES: dict[str, list[str]] = {
    "preprocess": ["to_torchvision", "model.transform"],
    "trunk": ["model.backbone"],
    "proposals": ["model.rpn"],
    "roi_sampling": ["model.roi_heads.select_training_samples"],
    "region_head": ["model.roi_heads.box_roi_pool", "model.roi_heads.box_head", "model.roi_heads.box_predictor"],
    "postprocess": ["model.roi_heads.postprocess_detections", "model.transform.postprocess", "from_torchvision"],
    "rois": ["model.roi_heads.box_predictor"],
}


class _Trunk(nn.Module):
    """detkit trunk with torchvision's backbone attribute: ``(N,3,H,W) -> (N,C,H/16,W/16)``."""

    def __init__(self, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = trunk
        self.out_channels = int(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def torch_trunk(trunk: nn.Module) -> nn.Module:
    """A copy of ``trunk`` with each of detkit's LRN layers (:mod:`detkit.backbones.lrn`) swapped
    for ``torch.nn.LocalResponseNorm`` with the same arguments: the same function, computed the way
    torch computes it."""
    trunk = copy.deepcopy(trunk)
    for name, module in list(trunk.named_modules()):
        if isinstance(module, LocalResponseNorm):
            parent, _, leaf = name.rpartition(".")
            setattr(trunk.get_submodule(parent) if parent else trunk, leaf,
                    nn.LocalResponseNorm(module.size, alpha=module.alpha, beta=module.beta, k=module.k))
    return trunk


class _FlatHead(nn.Module):
    """detkit region head, output flattened to ``(R, D)`` like torchvision's ``TwoMLPHead``."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x).flatten(1)


class TorchvisionDetector(nn.Module):
    """A torchvision detection model behind detkit's detector contract.

    ``forward(batch: ImageBatch, targets=None)``: train mode -> torchvision's loss dict; eval mode
    -> one ``{"boxes", "scores", "labels"}`` per image with labels in ``0..K-1``. The uint8 batch is
    cut to each image's size and scaled to ``[0, 1]`` floats (torchvision normalises itself).
    """

    def __init__(self, model: TVFasterRCNN) -> None:
        super().__init__()
        self.model = model

    def to_torchvision(self, batch: ImageBatch, targets: list[dict] | None):
        images = [batch.tensor[i, :, :h, :w].float().div_(255.0) for i, (h, w) in enumerate(batch.image_sizes)]
        if targets is None:
            return images, None
        # torchvision's class 0 is background, so object class k is label k + 1.
        return images, [{"boxes": t["boxes"].float(), "labels": t["labels"].long() + 1} for t in targets]

    def from_torchvision(self, detections: list[dict]) -> list[dict]:
        return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in detections]

    def forward(self, batch: ImageBatch, targets: list[dict] | None = None):
        images, tv_targets = self.to_torchvision(batch, targets if self.training else None)
        if self.training:
            return self.model(images, tv_targets)
        return self.from_torchvision(self.model(images))


def _anchor_permutation(num_sizes: int, num_ratios: int) -> Tensor:
    """``perm[a_tv] = a_detkit``: torchvision anchor ``r * S + s`` is detkit's ``s * R + r``."""
    return torch.tensor([s * num_ratios + r for r in range(num_ratios) for s in range(num_sizes)])


@torch.no_grad()
def _rpn_head_like(detkit_head: nn.Module, sizes: int, ratios: int) -> TVRPNHead:
    """torchvision RPNHead with detkit's conv width and weights (anchor channels reordered)."""
    conv = detkit_head.conv
    tv = TVRPNHead(conv.in_channels, detkit_head.num_anchors)
    # torchvision's RPNHead fixes the 3x3 conv's width to in_channels; use detkit's width.
    tv.conv = nn.Sequential(copy.deepcopy(conv), nn.ReLU(inplace=True))
    a, ch = detkit_head.num_anchors, conv.out_channels
    perm = _anchor_permutation(sizes, ratios)
    tv.cls_logits = nn.Conv2d(ch, a, kernel_size=1)
    tv.bbox_pred = nn.Conv2d(ch, 4 * a, kernel_size=1)
    tv.cls_logits.weight.copy_(detkit_head.objectness.weight[perm])
    tv.cls_logits.bias.copy_(detkit_head.objectness.bias[perm])
    perm4 = (perm[:, None] * 4 + torch.arange(4)[None, :]).reshape(-1)  # deltas are (A, 4) blocks
    tv.bbox_pred.weight.copy_(detkit_head.deltas.weight[perm4])
    tv.bbox_pred.bias.copy_(detkit_head.deltas.bias[perm4])
    return tv


@torch.no_grad()
def _predictor_like(detkit_predictor: nn.Module) -> TVPredictor:
    """torchvision predictor (K+1 classes, 4(K+1) deltas) computing detkit's scores and deltas."""
    k = detkit_predictor.num_classes
    d = detkit_predictor.cls_score.in_features
    tv = TVPredictor(d, k + 1)
    tv.cls_score.weight.copy_(detkit_predictor.cls_score.weight)  # both: index 0 is background
    tv.cls_score.bias.copy_(detkit_predictor.cls_score.bias)
    tv.bbox_pred.weight.zero_()
    tv.bbox_pred.bias.zero_()
    tv.bbox_pred.weight[4:].copy_(detkit_predictor.bbox_pred.weight)
    tv.bbox_pred.bias[4:].copy_(detkit_predictor.bbox_pred.bias)
    return tv


def build_torchvision_twin(detector: nn.Module, input_hw: tuple[int, int]) -> TorchvisionDetector:
    """torchvision ``FasterRCNN`` equal to ``detector`` (module docstring), on its device.

    Args:
        detector: a detkit ``FasterRCNN`` (has ``backbone``, ``rpn`` and ``roi_head``).
        input_hw: the benchmark's ``(H, W)``: torchvision's resize is set to keep exactly it.

    Raises:
        BenchmarkError: ``detector`` is not a Faster R-CNN (torchvision has no Fast R-CNN with
            given proposals, nor the classic methods).
    """
    if not all(hasattr(detector, a) for a in ("backbone", "rpn", "roi_head")):
        raise BenchmarkError(f"torchvision_compare.py: --compare torchvision needs a Faster R-CNN "
                             f"(backbone, rpn, roi_head); got {type(detector).__name__}")
    bb, rpn, head = detector.backbone, detector.rpn, detector.roi_head
    gen = rpn.anchor_generator
    h, w = (int(v) for v in input_hw)
    roi = head.roi_pool
    device = detector.pixel_mean.device
    model = TVFasterRCNN(
        _Trunk(torch_trunk(bb.trunk), bb.out_channels), num_classes=None,
        min_size=min(h, w), max_size=max(h, w),  # scale factor exactly 1: no resizing
        image_mean=list(bb.pixel_mean), image_std=list(bb.pixel_std),
        rpn_anchor_generator=TVAnchorGenerator(sizes=(tuple(gen.sizes),), aspect_ratios=(tuple(gen.aspect_ratios),)),
        rpn_head=_rpn_head_like(rpn.head, len(gen.sizes), len(gen.aspect_ratios)),
        rpn_pre_nms_top_n_train=rpn.pre_nms_top_n[True], rpn_pre_nms_top_n_test=rpn.pre_nms_top_n[False],
        rpn_post_nms_top_n_train=rpn.post_nms_top_n[True], rpn_post_nms_top_n_test=rpn.post_nms_top_n[False],
        rpn_nms_thresh=rpn.nms_thresh, rpn_fg_iou_thresh=rpn.matcher.thresholds[1],
        rpn_bg_iou_thresh=rpn.matcher.thresholds[0], rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=roi.output_size, sampling_ratio=2),
        box_head=_FlatHead(copy.deepcopy(bb.region_head)),
        box_predictor=_predictor_like(head.predictor),
        box_score_thresh=head.score_thresh, box_nms_thresh=head.nms_thresh,
        box_detections_per_img=head.detections_per_img,
        box_fg_iou_thresh=head.matcher.thresholds[1], box_bg_iou_thresh=head.matcher.thresholds[1],
        box_batch_size_per_image=head.batch_size_per_image, box_positive_fraction=head.positive_fraction,
        bbox_reg_weights=tuple(head.box_coder.weights),
    )
    model.to(device)
    if getattr(detector, "channels_last", False):
        model.to(memory_format=torch.channels_last)
    return TorchvisionDetector(model)


def ratios(detkit_result: dict, torchvision_result: dict) -> dict[str, float]:
    """detkit / torchvision: ``train_speedup`` (images/s ratio, > 1 is detkit faster) and
    ``infer_latency_ratio`` / ``infer_throughput_speedup`` (latency ratio < 1 is detkit faster)."""
    out = {}
    if "train" in detkit_result and "train" in torchvision_result:
        out["train_speedup"] = detkit_result["train"]["images_per_s"] / torchvision_result["train"]["images_per_s"]
    if "infer_latency" in detkit_result and "infer_latency" in torchvision_result:
        out["infer_latency_ratio"] = (detkit_result["infer_latency"]["total_ms"]["median"]
                                      / torchvision_result["infer_latency"]["total_ms"]["median"])
        out["infer_throughput_speedup"] = (detkit_result["infer_throughput"]["images_per_s"]
                                           / torchvision_result["infer_throughput"]["images_per_s"])
    return out


# --------------------------------------------------------------------------- the training twin
# For an accuracy comparison the twin is torchvision's FasterRCNN *as its users build it* around
# detkit's network: the same trunk and region head (copied, same initial weights), torchvision's own
# RPN head, predictor and defaults everywhere else. Two defaults cannot be used as they are:
# torchvision has no anchors for a single feature map (its default generator is one size per FPN
# level), so the twin puts those five sizes on the one map; and its 512 sampled RoIs per image make
# a CPU step several times slower for nothing, so the twin samples 128 (what torchvision users
# commonly set for small data). Both are settings, overridable with ``settings=``.
TWIN_ANCHOR_SIZES: tuple[int, ...] = (32, 64, 128, 256, 512)
TWIN_ANCHOR_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
TWIN_TRAIN_SETTINGS: dict[str, Any] = {"box_batch_size_per_image": 128}
_TWIN_EXTRA_KEYS = ("anchor_sizes", "anchor_ratios", "roi_sampling_ratio")


def torchvision_defaults() -> dict[str, Any]:
    """torchvision ``FasterRCNN``'s keyword defaults, read from its signature (so a torchvision
    release that changes them changes the twin with it)."""
    skip = {"self", "backbone", "num_classes", "min_size", "max_size", "image_mean", "image_std", "kwargs"}
    params = inspect.signature(TVFasterRCNN.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in skip and p.default is not None}


def twin_settings(settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training twin's settings: torchvision's defaults, the twin's two exceptions, then
    ``settings`` (any ``FasterRCNN`` keyword, or ``anchor_sizes``, ``anchor_ratios``,
    ``roi_sampling_ratio``).

    Raises:
        BenchmarkError: a key that is neither.
    """
    out = {**torchvision_defaults(), "anchor_sizes": TWIN_ANCHOR_SIZES, "anchor_ratios": TWIN_ANCHOR_RATIOS,
           "roi_sampling_ratio": 2, "bbox_reg_weights": (10.0, 10.0, 5.0, 5.0), **TWIN_TRAIN_SETTINGS}
    for key, value in dict(settings or {}).items():
        if key not in out:
            raise BenchmarkError(f"torchvision twin: unknown setting {key!r}; known: {', '.join(sorted(out))}")
        out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


class _KeepSize(GeneralizedRCNNTransform):
    """torchvision's transform without its resize: the twin gets exactly the images (already
    resized by detkit's data pipeline) that detkit's detector gets, so boxes come back unscaled."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def build_training_twin(detector: nn.Module, settings: Mapping[str, Any] | None = None) -> TorchvisionDetector:
    """torchvision ``FasterRCNN`` around a copy of ``detector``'s trunk and region head.

    Everything else is torchvision's: ``RPNHead``, ``FastRCNNPredictor`` (its own initialisation),
    ``MultiScaleRoIAlign``, losses, sampling and post-processing, with :func:`twin_settings`.
    Images are not resized again (:class:`_KeepSize`).

    Raises:
        BenchmarkError: ``detector`` is not a detkit Faster R-CNN, or an unknown setting.
    """
    if not all(hasattr(detector, a) for a in ("backbone", "rpn", "roi_head")):
        raise BenchmarkError(f"the torchvision twin needs a Faster R-CNN (backbone, rpn, roi_head); "
                             f"got {type(detector).__name__}")
    s = twin_settings(settings)
    bb = detector.backbone
    anchors = TVAnchorGenerator(sizes=(tuple(s["anchor_sizes"]),), aspect_ratios=(tuple(s["anchor_ratios"]),))
    kwargs = {k: v for k, v in s.items() if k not in _TWIN_EXTRA_KEYS}
    model = TVFasterRCNN(
        _Trunk(torch_trunk(bb.trunk), bb.out_channels), num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=TVRPNHead(bb.out_channels, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=bb.roi_size,
                                        sampling_ratio=int(s["roi_sampling_ratio"])),
        box_head=_FlatHead(copy.deepcopy(bb.region_head)),
        box_predictor=TVPredictor(bb.head_channels, detector.num_classes + 1),
        **kwargs,
    )
    model.transform = _KeepSize(min_size=1, max_size=1, image_mean=list(bb.pixel_mean),
                                image_std=list(bb.pixel_std))
    model.to(detector.pixel_mean.device)
    return TorchvisionDetector(model)


def setting_differences(detector: nn.Module, settings: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Where a detkit Faster R-CNN and its training twin differ: ``[{"setting", "detkit",
    "torchvision"}]``, one row per setting whose values are not the same (the comparison's table)."""
    s = twin_settings(settings)
    rpn, head = detector.rpn, detector.roi_head
    gen = rpn.anchor_generator
    lo, fg = head.matcher.thresholds
    pool = getattr(head.roi_pool, "mode", "pool")
    rows = [
        ("anchor sizes", list(gen.sizes), list(s["anchor_sizes"])),
        ("anchor ratios", list(gen.aspect_ratios), list(s["anchor_ratios"])),
        ("RPN boxes before NMS (train / test)", [rpn.pre_nms_top_n[True], rpn.pre_nms_top_n[False]],
         [s["rpn_pre_nms_top_n_train"], s["rpn_pre_nms_top_n_test"]]),
        ("RPN proposals after NMS (train / test)", [rpn.post_nms_top_n[True], rpn.post_nms_top_n[False]],
         [s["rpn_post_nms_top_n_train"], s["rpn_post_nms_top_n_test"]]),
        ("RPN NMS IoU", rpn.nms_thresh, s["rpn_nms_thresh"]),
        ("RPN IoU background / object", list(rpn.matcher.thresholds), [s["rpn_bg_iou_thresh"], s["rpn_fg_iou_thresh"]]),
        ("RPN anchors per image, positive share", [rpn.batch_size_per_image, rpn.positive_fraction],
         [s["rpn_batch_size_per_image"], s["rpn_positive_fraction"]]),
        ("RPN anchors crossing the image border in training",
         "ignored" if rpn.allowed_border == 0 else f"used within {rpn.allowed_border:g} px", "used"),
        ("RoI features", f"RoI {'max pooling' if pool == 'pool' else 'Align'} {head.roi_pool.output_size}",
         f"RoI Align {detector.backbone.roi_size} (sampling ratio {s['roi_sampling_ratio']})"),
        ("RoIs per image, foreground share", [head.batch_size_per_image, head.positive_fraction],
         [s["box_batch_size_per_image"], s["box_positive_fraction"]]),
        ("RoI foreground IoU", fg, s["box_fg_iou_thresh"]),
        ("RoI background IoU band", f"[{lo:g}, {fg:g})", f"[0, {s['box_bg_iou_thresh']:g})"),
        ("RoI box loss smooth-L1 beta", head.smooth_l1_beta, 1.0 / 9),
        ("box coder weights", list(head.box_coder.weights), list(s["bbox_reg_weights"])),
        ("predictor initialisation", "N(0, 0.01) scores, N(0, 0.001) boxes", "PyTorch Linear default"),
        ("test score threshold", head.score_thresh, s["box_score_thresh"]),
        ("test NMS IoU", head.nms_thresh, s["box_nms_thresh"]),
        ("detections per image", head.detections_per_img, s["box_detections_per_img"]),
    ]
    return [{"setting": n, "detkit": a, "torchvision": b} for n, a, b in rows if _norm(a) != _norm(b)]


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return round(float(value), 6) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
