"""The base of every detector: input normalisation, target padding, and what a method declares.

All five methods (R-CNN, SPPNet, OverFeat, Fast R-CNN, Faster R-CNN) take the same inputs — a
uint8 ``ImageBatch`` and, in training, one target dict per image — so this one class turns them into
what their networks use: normalised float images (the batch padding set to the mean colour) and
padded ground truth with a validity mask. Each method also *declares*, as class attributes, what
tools outside it need to know, so that a sixth method needs no change in engine/ or analysis/:

* ``phases``: its test-time phases for the benchmark (``trunk`` / ``proposals`` / ``region_head``
  / ``postprocess``, plus ``preprocess`` and ``rois``), as dotted paths of modules (hooked) or
  methods (wrapped) on the detector (``detkit.analysis.benchmarking.timing.PhaseTimer``);
* ``proposals``: where its regions come from at test time — ``"given"`` (selective search or your
  own boxes, ``model(batch, proposals=...)``), ``"rpn"`` or ``"dense windows"``.

The training recipe (joint, stage-wise, 4-step alternating) is the method config's ``recipe``.

Shape letters: ``N`` images, ``H, W`` the padded batch size, ``G`` ground-truth slots per image
(the most objects of any image in the batch; others padded and masked by ``gt_valid``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from detkit.data.batch import ImageBatch

# Fast and Faster R-CNN's phases (the RoI head's parts), the default of a detector on a backbone.
ROI_HEAD_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "trunk": ["backbone.trunk"],
    "proposals": ["rpn"],
    "roi_sampling": ["roi_head.sample"],
    "region_head": ["roi_head.roi_pool", "roi_head.box_head", "roi_head.predictor"],
    "postprocess": ["roi_head.postprocess"],
    "rois": ["roi_head.predictor"],  # not a phase: counts the regions its first output has
}


class Detector(nn.Module):
    """Normalises the uint8 batch and pads the training targets (module docstring).

    Args:
        num_classes: ``K`` object classes (background excluded).
        pixel_mean, pixel_std: the network's input normalisation (per RGB channel, on 0-1 values).
        train_on_difficult: use VOC "difficult" objects as ground truth in training (the papers
            do); ``False`` drops them like crowd regions. Crowd objects (``iscrowd``) are never
            used as ground truth, so they never make positives.
        channels_last: convert the model and every input to ``torch.channels_last`` (faster
            convolutions on tensor-core GPUs and on CPUs with oneDNN).
    """

    phases: ClassVar[dict[str, list[str]]] = ROI_HEAD_PHASES
    proposals: ClassVar[str] = "given"

    def __init__(self, *, num_classes: int, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 train_on_difficult: bool = True, channels_last: bool = False) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.train_on_difficult = bool(train_on_difficult)
        self.channels_last = bool(channels_last)
        # Folded "/255 then (x - mean) / std" on 0-255 values; not saved (comes from the backbone).
        mean = torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    def class_specific(self) -> list[str]:
        """State-dict key prefixes of the layers whose shape or meaning depends on the classes (the
        predictor), re-initialised when a run starts from another run's weights on other classes
        (``init_from``)."""
        return ["roi_head.predictor."]

    def _finish_init(self) -> None:
        """Called by subclasses once all parts exist."""
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def preprocess(self, batch: ImageBatch) -> tuple[Tensor, Tensor]:
        """uint8 ``(N, 3, H, W)`` -> normalised float ``(N, 3, H, W)`` and ``image_hw`` ``(N, 2)``.

        The zero padding of the batch is set to 0 after normalisation (the mean colour), as if
        each image had been padded after normalising.
        """
        x = getattr(batch, "tensor", None)
        if x is None or not hasattr(batch, "image_sizes"):
            raise ValueError(f"{type(self).__name__}: expected an ImageBatch, got {type(batch).__name__}")
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: ImageBatch.tensor must be uint8 (N, 3, H, W), got "
                             f"{x.dtype} {tuple(x.shape)}")
        if len(batch.image_sizes) != x.shape[0]:
            raise ValueError(f"{type(self).__name__}: {len(batch.image_sizes)} image sizes for {x.shape[0]} images")
        device = self.pixel_mean.device
        x = x.to(device, non_blocking=True)
        image_hw = torch.as_tensor(batch.image_sizes, dtype=torch.int64).to(device, non_blocking=True)
        _, _, h, w = x.shape
        rows = torch.arange(h, device=device)[None, :] < image_hw[:, 0:1]  # (N, H)
        cols = torch.arange(w, device=device)[None, :] < image_hw[:, 1:2]  # (N, W)
        inside = (rows[:, None, :, None] & cols[:, None, None, :]).to(torch.float32)
        x = (x.float() - self.pixel_mean) / self.pixel_std * inside
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, image_hw

    def prepare_targets(self, targets: list[dict] | None, num_images: int) -> tuple[Tensor, Tensor, Tensor]:
        """Pad per-image targets: -> boxes ``(N, G, 4)``, labels ``(N, G)``, valid ``(N, G)`` bool.

        ``valid`` excludes padding, crowd objects, difficult objects (unless
        ``train_on_difficult``) and boxes with no area (their regression target is undefined).
        """
        if targets is None:
            raise ValueError(f"{type(self).__name__}: training mode needs targets (a list of dicts with "
                             "'boxes' and 'labels'); call model.eval() for inference")
        if len(targets) != num_images:
            raise ValueError(f"{type(self).__name__}: {len(targets)} targets for {num_images} images")
        device = self.pixel_mean.device
        boxes, labels, usable = [], [], []
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"{type(self).__name__}: target {i} needs 'boxes' and 'labels', has {sorted(t)}")
            b = torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4)
            lab = torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1)
            if lab.shape[0] != b.shape[0]:
                raise ValueError(f"{type(self).__name__}: target {i} has {b.shape[0]} boxes but {lab.shape[0]} labels")
            if lab.device.type == "cpu" and lab.numel() and (lab.min() < 0 or lab.max() >= self.num_classes):
                raise ValueError(f"{type(self).__name__}: target {i} labels must be in 0..{self.num_classes - 1}, "
                                 f"got {lab.tolist()}")
            keep = ~_flag(t, "iscrowd", b, owner=type(self).__name__)
            if not self.train_on_difficult:
                keep &= ~_flag(t, "difficult", b, owner=type(self).__name__)
            boxes.append(b.to(device, non_blocking=True))
            labels.append(lab.to(device, non_blocking=True))
            usable.append(keep.to(device, non_blocking=True))
        gt_boxes = pad_sequence(boxes, batch_first=True)
        if gt_boxes.dim() == 2:  # no boxes at all in the batch
            gt_boxes = gt_boxes.reshape(num_images, 0, 4)
        gt_labels = pad_sequence(labels, batch_first=True).reshape(num_images, -1)
        gt_valid = pad_sequence(usable, batch_first=True).reshape(num_images, -1)
        has_area = (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
        return gt_boxes, gt_labels, gt_valid & has_area


def _flag(target: dict, key: str, boxes: Tensor, *, owner: str) -> Tensor:
    """The target's ``(M,)`` bool flag ``key`` (all False when absent); ``owner`` names the detector in errors."""
    value = target.get(key)
    if value is None:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    value = torch.as_tensor(value, dtype=torch.bool, device=boxes.device).reshape(-1)
    if value.shape[0] != boxes.shape[0]:
        raise ValueError(f"{owner}: target '{key}' has {value.shape[0]} entries for {boxes.shape[0]} boxes")
    return value
