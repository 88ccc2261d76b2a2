"""The one sample record shared by VOC and COCO loading, training and evaluation.

Box convention (used everywhere inside detkit)
----------------------------------------------
Boxes are ``(x0, y0, x1, y1)`` in **0-based continuous pixel coordinates**: the top-left corner
of the top-left pixel is ``(0, 0)`` and a box covering exactly pixel columns ``a..b`` (inclusive,
0-based) spans ``x0 = a``, ``x1 = b + 1``. Width is ``x1 - x0``.

Pascal VOC files store **1-based inclusive** pixel indices ``(xmin, ymin, xmax, ymax)``; they
become ``(xmin - 1, ymin - 1, xmax, ymax)``. COCO's ``[x, y, w, h]`` is already continuous and
becomes ``(x, y, x + w, y + h)``. The VOC devkit's "+1" overlap rule on inclusive indices equals
the plain continuous IoU on these boxes (see ``detkit.evaluation.voc``).

Labels are contiguous class indices ``0 .. K-1`` into ``DetectionData.class_names``; detectors
keep their background class internal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty(dtype) -> np.ndarray:
    return np.zeros((0,), dtype=dtype)


@dataclass
class Record:
    """One image and its objects.

    Attributes:
        image_id: unique integer id within its ``DetectionData`` (the COCO id for COCO data; the
            position in the combined split list for VOC). Detection files refer to it.
        file_name: path of the image file.
        width, height: image size in pixels (after EXIF orientation).
        boxes: ``(N, 4)`` float32, xyxy, 0-based continuous (module docstring).
        labels: ``(N,)`` int64 class indices in ``[0, K)``.
        difficult: ``(N,)`` bool, VOC ``<difficult>``: neither rewarded nor penalised in VOC AP.
        truncated: ``(N,)`` bool, VOC ``<truncated>``.
        iscrowd: ``(N,)`` bool, COCO ``iscrowd``: ignored in training, matched as crowd by COCOeval.
        name: human-readable id: the VOC image id (``"000005"``) or the COCO file name.
    """

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    difficult: np.ndarray = field(default_factory=lambda: _empty(bool))
    truncated: np.ndarray = field(default_factory=lambda: _empty(bool))
    iscrowd: np.ndarray = field(default_factory=lambda: _empty(bool))
    name: str = ""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        for attr in ("difficult", "truncated", "iscrowd"):
            v = np.asarray(getattr(self, attr), dtype=bool).reshape(-1)
            if v.size == 0 and n:
                v = np.zeros(n, dtype=bool)
            setattr(self, attr, v)
        lengths = {len(self.labels), len(self.difficult), len(self.truncated), len(self.iscrowd)}
        if lengths != {n}:
            raise ValueError(
                f"{self.file_name}: record fields disagree in length "
                f"(boxes {n}, labels {len(self.labels)}, difficult {len(self.difficult)}, "
                f"truncated {len(self.truncated)}, iscrowd {len(self.iscrowd)})"
            )

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


@dataclass
class DetectionData:
    """A loaded data set split: its records and its classes.

    Attributes:
        records: the images, in a stable order.
        class_names: ``K`` names; label ``i`` is ``class_names[i]``.
        category_ids: ``K`` external ids; label ``i`` is written as ``category_ids[i]`` in COCO-format
            files (the original COCO ids, or ``1..K`` for VOC data).
        name: a short description for messages and reports (e.g. ``"voc:bccd/test"``).
    """

    records: list[Record]
    class_names: list[str]
    category_ids: list[int] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if not self.category_ids:
            self.category_ids = list(range(1, len(self.class_names) + 1))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names but {len(self.category_ids)} category ids"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def by_id(self) -> dict[int, Record]:
        return {r.image_id: r for r in self.records}
