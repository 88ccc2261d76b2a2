"""Any ``DetectionData`` (VOC included) -> a COCO ground-truth dict, so pycocotools' ``COCOeval``
can score it (AP@[.5:.95], AP50, AP75, S/M/L, AR) beside the VOC metric.

Why ``difficult`` becomes ``iscrowd``: VOC's rule is that difficult objects are neither rewarded
nor penalised. COCOeval has exactly one such mechanism, the crowd flag: ``COCOeval._prepare``
sets ``gt["ignore"] = gt["iscrowd"]`` (overwriting any ``ignore`` key), and a detection matched
to an ignored ground truth counts neither as a true nor a false positive, while missing it costs
no recall. One difference remains: COCOeval matches crowd boxes by intersection over the
*detection's* area, not IoU, so it forgives a little more than VOC does.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .record import DetectionData

__all__ = ["to_coco_dict", "write_coco_json"]


def to_coco_dict(
    data: DetectionData, *, difficult_as_crowd: bool = True, image_root: str | os.PathLike | None = None
) -> dict:
    """COCO ground truth for ``data``.

    Args:
        data: records with ``boxes`` ``(N, 4)`` xyxy 0-based continuous and labels ``0..K-1``.
        difficult_as_crowd: write difficult objects as ``iscrowd=1`` (module docstring).
        image_root: write each ``file_name`` relative to this folder; default the base name
            (for VOC: relative to ``JPEGImages``).

    Returns:
        ``{"info", "licenses", "images": [{id, file_name, width, height}], "annotations": [{id,
        image_id, category_id, bbox [x, y, w, h], area (w*h), iscrowd}], "categories": [{id,
        name, supercategory}]}``; image ids are ``Record.image_id``, category ids
        ``data.category_ids``.
    """
    images, annotations = [], []
    for r in data.records:
        if image_root is not None:
            file_name = os.path.relpath(r.file_name, image_root)
        else:
            file_name = os.path.basename(r.file_name)
        images.append({"id": int(r.image_id), "file_name": file_name, "width": int(r.width), "height": int(r.height)})
        for box, label, difficult, crowd in zip(r.boxes.tolist(), r.labels.tolist(), r.difficult, r.iscrowd):
            x0, y0, x1, y1 = box
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO annotation ids start at 1 (0 is reserved by COCOeval)
                    "image_id": int(r.image_id),
                    "category_id": int(data.category_ids[label]),
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": int(bool(crowd) or (difficult_as_crowd and bool(difficult))),
                }
            )
    categories = [
        {"id": int(cid), "name": name, "supercategory": "none"}
        for cid, name in zip(data.category_ids, data.class_names)
    ]
    return {
        "info": {"description": data.name or "detkit export"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_coco_json(data: DetectionData, path: str | os.PathLike, **kw) -> Path:
    """Write ``to_coco_dict(data, **kw)`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_coco_dict(data, **kw)), encoding="utf-8")
    return path
