"""The torch ``Dataset`` over ``DetectionData``, and the collate function that pads batches.

One sample is ``(image, target)``:

* ``image``: ``(3, H, W)`` uint8 RGB tensor, ``(H, W)`` the size after the transforms' resize;
* ``target``: the training target dict of the detector contract

  ======== ========================= ==========================================================
  key      type                      meaning
  ======== ========================= ==========================================================
  boxes    ``(M, 4)`` float32 tensor xyxy, 0-based continuous, in the resized image's pixels
  labels   ``(M,)`` int64 tensor     class indices ``0..K-1``
  difficult ``(M,)`` bool tensor     VOC ``difficult`` (ignored by the VOC metric)
  iscrowd  ``(M,)`` bool tensor      COCO ``iscrowd``
  image_id ``int``                   ``Record.image_id`` (detections are keyed by it)
  orig_size ``(h, w)`` ints          size of the image file
  size     ``(H, W)`` ints           size after resizing (what the detector sees, unpadded)
  proposals ``(P, 4)`` float32 tensor only with ``proposals=``: the image's region proposals, xyxy
                                     in the resized (and flipped) image's pixels, like ``boxes``
  ======== ========================= ==========================================================

A box ``(x0, y0, x1, y1)`` predicted on the resized image maps back to the file's pixels by
``x * w / W`` and ``y * h / H``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from detkit.data.batch import ImageBatch
from detkit.data.images import ImageReadError, read_image
from detkit.data.problems import DataError
from detkit.data.record import DetectionData, Record

Target = dict[str, Any]


class DetectionDataset(Dataset):
    """Images and training targets of a ``DetectionData``.

    Args:
        data: the loaded records and class names.
        transforms: a callable ``(image, boxes, labels=..., difficult=..., iscrowd=...) -> dict``
            with keys ``image``, ``boxes``, ``labels``, ``difficult``, ``iscrowd``, ``size``, as
            returned by ``detkit.data.transforms.build_transforms``; ``None`` keeps the image and
            boxes as they are in the file.
        proposals: ``{image_id: (P, 4) float}`` region proposals (Fast R-CNN's "object proposals")
            in ORIGINAL-image xyxy pixels, as ``detkit.proposals.cache.load_proposals`` returns;
            each target then gets ``proposals`` transformed exactly like its ``boxes`` (module
            docstring; ``transforms`` then also receives an ``is_proposal`` per-box field). Images
            missing from the dict get a ``(0, 4)`` tensor.
    """

    def __init__(self, data: DetectionData, transforms: Callable[..., dict[str, Any]] | None = None, *,
                 proposals: Mapping[int, np.ndarray] | None = None):
        if not isinstance(data, DetectionData):
            raise TypeError(f"DetectionDataset expects a DetectionData, got {type(data).__name__}")
        if proposals is not None and not isinstance(proposals, Mapping):
            raise TypeError(f"DetectionDataset: proposals must be a dict image_id -> (P, 4) array, "
                            f"got {type(proposals).__name__}")
        self.data = data
        self.transforms = transforms
        self.proposals = proposals

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def __len__(self) -> int:
        return len(self.data.records)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the records (no image is read)."""
        return [r.width / r.height for r in self.data.records]

    def _read(self, index: int, rec: Record) -> np.ndarray:
        try:
            image = read_image(rec.file_name)
        except (OSError, ValueError) as e:
            # read_image's message already names the file; add which sample asked for it.
            detail = e.detail if isinstance(e, DataError) else str(e)
            raise ImageReadError(f"sample {index} (image_id {rec.image_id}): {detail}",
                                 file=rec.file_name) from e
        if image.shape[:2] != (rec.height, rec.width):
            # The boxes are in the record's pixel frame; a different file size would misplace them.
            raise DataError(
                f"sample {index} (image_id {rec.image_id}): image is {image.shape[1]}x{image.shape[0]} "
                f"(w x h) but its record says {rec.width}x{rec.height}; reload with check_images=True",
                file=rec.file_name,
            )
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        """Return ``(image (3, H, W) uint8, target dict)`` for sample ``index`` (module docstring)."""
        rec = self.data.records[index]
        image = self._read(index, rec)
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        boxes, labels, difficult, iscrowd = rec.boxes, rec.labels, rec.difficult, rec.iscrowd
        props = self._proposals_of(index, rec)
        if self.transforms is not None and props is not None:
            image, boxes, labels, difficult, iscrowd, props = _transform_with_proposals(
                self.transforms, image, boxes, labels, difficult, iscrowd, props)
        elif self.transforms is not None:
            out = self.transforms(image, boxes, labels=labels, difficult=difficult, iscrowd=iscrowd)
            image, boxes = out["image"], out["boxes"]
            labels, difficult, iscrowd = out["labels"], out["difficult"], out["iscrowd"]
        size = (int(image.shape[0]), int(image.shape[1]))
        # torch.tensor copies: without transforms these are the record's own arrays, which a
        # detector editing its targets in place must not change.
        target: Target = {
            "boxes": torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.tensor(np.asarray(labels, dtype=np.int64).reshape(-1)),
            "difficult": torch.tensor(np.asarray(difficult, dtype=bool).reshape(-1)),
            "iscrowd": torch.tensor(np.asarray(iscrowd, dtype=bool).reshape(-1)),
            "image_id": int(rec.image_id),
            "orig_size": orig_size,
            "size": size,
        }
        if props is not None:
            target["proposals"] = torch.tensor(props, dtype=torch.float32).reshape(-1, 4)
        # HWC -> CHW in one copy (the copy is also writable: read_image's array may not be).
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return tensor, target

    def _proposals_of(self, index: int, rec: Record) -> np.ndarray | None:
        """The record's ``(P, 4)`` float32 proposals (``(0, 4)`` when it has none), or ``None``
        when this dataset carries no proposals."""
        if self.proposals is None:
            return None
        p = self.proposals.get(rec.image_id)
        if p is None:
            return np.zeros((0, 4), dtype=np.float32)
        p = np.asarray(p, dtype=np.float32)
        if p.size and (p.ndim != 2 or p.shape[1] != 4):
            raise DataError(f"sample {index} (image_id {rec.image_id}): proposals must be (P, 4), "
                            f"got shape {p.shape}", file=rec.file_name)
        return p.reshape(-1, 4)


def _transform_with_proposals(transforms, image, boxes, labels, difficult, iscrowd, proposals):
    """Run ``transforms`` once over the ground truth and the proposals together.

    One call guarantees the proposals see the very same random scale and flip as the image and its
    boxes. They ride along as extra boxes marked by an ``is_proposal`` per-box field (labels -1);
    those that the transform drops (clipped away or below its minimum box size) are gone.
    Returns ``(image, boxes, labels, difficult, iscrowd, proposals)``.
    """
    m, p = len(boxes), len(proposals)
    is_proposal = np.concatenate([np.zeros(m, dtype=bool), np.ones(p, dtype=bool)])
    out = transforms(
        image, np.concatenate([np.asarray(boxes, dtype=np.float32).reshape(-1, 4), proposals]),
        labels=np.concatenate([np.asarray(labels, dtype=np.int64).reshape(-1), np.full(p, -1, dtype=np.int64)]),
        difficult=np.concatenate([np.asarray(difficult, dtype=bool).reshape(-1), np.zeros(p, dtype=bool)]),
        iscrowd=np.concatenate([np.asarray(iscrowd, dtype=bool).reshape(-1), np.zeros(p, dtype=bool)]),
        is_proposal=is_proposal,
    )
    sel = np.asarray(out["is_proposal"], dtype=bool)
    gt = ~sel
    new_boxes = np.asarray(out["boxes"], dtype=np.float32).reshape(-1, 4)
    return (out["image"], new_boxes[gt], np.asarray(out["labels"])[gt], np.asarray(out["difficult"])[gt],
            np.asarray(out["iscrowd"])[gt], new_boxes[sel])


def collate_detections(
    samples: Sequence[tuple[Tensor, Target]], size_divisible: int = 32
) -> tuple[ImageBatch, list[Target]]:
    """Pad a list of ``(image (3, h_i, w_i), target)`` into ``(ImageBatch, targets)``.

    Images are zero-padded at the bottom/right to ``(H, W)``, the per-batch maxima rounded up to
    ``size_divisible`` (the trunk's stride multiple); ``ImageBatch.image_sizes`` keeps each
    ``(h_i, w_i)``. Targets pass through unchanged (their boxes need no shift: padding is only at
    the bottom/right). Use ``functools.partial(collate_detections, size_divisible=...)`` as a
    ``DataLoader``'s ``collate_fn``.
    """
    if len(samples) == 0:
        raise ValueError("collate_detections: empty batch")
    images = [s[0] for s in samples]
    targets = [s[1] for s in samples]
    return ImageBatch.from_images(images, size_divisible=size_divisible), targets
