"""COCO loading: an ``instances_*.json`` + an image folder -> ``DetectionData`` (via pycocotools).

Category ids (COCO's are 1..90 with gaps) become contiguous labels ``0..K-1`` in increasing id
order; ``DetectionData.category_ids[label]`` maps back, so detections can be written in COCO
format. ``image_id`` is the COCO image id. ``bbox`` ``[x, y, w, h]`` (continuous) becomes
``(x, y, x + w, y + h)``; ``iscrowd`` is kept (COCOeval treats crowd boxes as ignore regions).

The JSON is read and checked here first (pycocotools would stop on a missing key with a bare
``KeyError``, and silently keep only the last of two images with one id), then indexed with
``pycocotools.coco.COCO``. Faults follow the strict/lenient policy of ``problems.py``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from tqdm import tqdm

from .images import ImageReadError, image_size, read_image
from .problems import DataError, DataProblems, parse_coords, repair_box
from .record import DetectionData, Record

__all__ = ["load_coco"]

_BAR_MIN_FILES = 2000
_REQUIRED = {
    "images": ("id", "file_name"),
    "categories": ("id", "name"),
    "annotations": ("image_id", "category_id", "bbox"),
}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError("COCO annotation file not found", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}", file=path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=path) from None
    if not isinstance(data, dict):
        raise DataError(f"top level is a {type(data).__name__}, expected an object with 'images'", file=path)
    for section, keys in _REQUIRED.items():
        if section == "annotations" and section not in data:
            data[section] = []  # image-info files (test sets) have no annotations
        entries = data.get(section)
        if not isinstance(entries, list):
            raise DataError(f"missing or non-list key {section!r}", file=path)
        for i, entry in enumerate(entries):
            missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise DataError(f"{section}[{i}] lacks key(s) {', '.join(map(repr, missing))}", file=path)
            for key in keys:
                if key.endswith("id") and (not isinstance(entry[key], int) or isinstance(entry[key], bool)):
                    raise DataError(f"{section}[{i}][{key!r}] is {entry[key]!r}, not an integer", file=path)
    ids = [c["id"] for c in data["categories"]]
    if len(set(ids)) != len(ids):
        raise DataError(f"duplicate category ids in {sorted(ids)}", file=path)
    return data


def _choose_categories(data: dict, class_names, path: Path) -> tuple[list[str], list[int]]:
    """Class names and COCO ids in label order: by increasing id, or the order of ``class_names``."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if class_names is None:
        return [str(c["name"]) for c in cats], [c["id"] for c in cats]
    by_name: dict[str, int] = {}
    for c in cats:
        by_name.setdefault(str(c["name"]), c["id"])
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise DataError(f"class_names {missing} are not categories here (have {sorted(by_name)})", file=path)
    return [str(n) for n in class_names], [by_name[n] for n in class_names]


def load_coco(
    annotation_file: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    keep_empty: bool = True,
    strict: bool = False,
    check_images: bool = False,
    name: str | None = None,
) -> DetectionData:
    """Load a COCO-format detection file.

    Args:
        annotation_file: the JSON (``images``, ``annotations``, ``categories``).
        image_root: folder the images' ``file_name`` is relative to.
        class_names: keep only these categories (by name), labelled in this order; annotations
            of the other (known) categories are left out by choice, not as a fault.
            ``None``: all, by increasing id.
        keep_empty: keep images without (kept) annotations.
        strict: raise ``DataError`` at the first fault instead of repairing and warning once.
        check_images: decode every image once (progress bar), skipping corrupt ones when lenient.
        name: short name for messages; default ``"coco:<json stem>"``.

    Returns:
        ``DetectionData`` with records in file order; ``boxes`` ``(N, 4)`` float32 xyxy,
        ``labels`` ``(N,)`` int64, ``iscrowd`` ``(N,)`` bool; ``category_ids`` the COCO ids.

    Raises:
        DataError: the file is missing, not JSON, or lacks required keys (always); any other
            fault in strict mode.
    """
    path = Path(annotation_file)
    image_root = Path(image_root)
    name = name or f"coco:{path.stem}"
    problems = DataProblems(name, strict=strict)
    data = _read_json(path)
    names, cat_ids = _choose_categories(data, class_names, path)
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    all_cat_ids = {c["id"] for c in data["categories"]}

    images, image_ids = [], set()
    for img in data["images"]:
        if img["id"] in image_ids:
            problems.report(
                "duplicate_id", path, f"image id {img['id']!r} appears twice", example=str(img["file_name"])
            )
            continue
        image_ids.add(img["id"])
        images.append(img)

    annotations = []
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}] (image id {ann['image_id']!r})"
        cat = ann["category_id"]
        if ann["image_id"] not in image_ids:
            problems.report(
                "unknown_image", path, f"{where}: no image with that id", example=f"image id {ann['image_id']}"
            )
        elif cat not in all_cat_ids:
            problems.report(
                "unknown_category", path, f"{where}: category id {cat!r} is not in 'categories'",
                example=f"category id {cat}",
            )
        elif cat in label_of:  # categories left out by class_names are dropped silently
            # Fresh ids: pycocotools keys annotations by id and would drop repeated or missing ones.
            annotations.append({**ann, "id": len(annotations) + 1, "_index": i})

    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()

    records = []
    bar = tqdm(images, desc=f"{'checking' if check_images else 'loading'} {name}", unit="img",
               disable=not (check_images or len(images) >= _BAR_MIN_FILES), leave=False)
    for img in bar:
        file_name = str(img["file_name"])
        image_path = image_root / file_name
        if not image_path.is_file():
            problems.report("missing_image", path, f"image file {image_path} not found", example=file_name)
            continue
        try:
            w, h = int(img.get("width") or 0), int(img.get("height") or 0)
        except (TypeError, ValueError):
            w = h = 0
        try:
            if check_images:
                dh, dw = read_image(image_path).shape[:2]
                if w > 0 and h > 0 and (w, h) != (dw, dh):
                    problems.report("size_mismatch", path, f"image {file_name}: listed as {w}x{h} but is {dw}x{dh}",
                                    example=file_name)
                w, h = dw, dh
            elif w <= 0 or h <= 0:  # size missing: read it from the file header
                w, h = image_size(image_path)
        except ImageReadError as e:
            problems.report("corrupt_image", path, f"image unreadable: {e}", example=file_name)
            continue

        boxes, labels, crowd = [], [], []
        for ann in coco.imgToAnns.get(img["id"], []):
            where = f"annotations[{ann['_index']}] (image {file_name})"
            xywh = parse_coords(ann["bbox"], problems, path, where, example=file_name)
            if xywh is None:
                continue
            x, y, bw, bh = xywh
            box = repair_box((x, y, x + bw, y + bh), w, h, problems, path, where, example=file_name)
            if box is not None:
                boxes.append(box)
                labels.append(label_of[ann["category_id"]])
                crowd.append(bool(ann.get("iscrowd", 0)))
        if not boxes and not keep_empty:
            continue
        records.append(
            Record(
                image_id=int(img["id"]),
                file_name=str(image_path),
                width=w,
                height=h,
                boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.array(labels, dtype=np.int64),
                iscrowd=np.array(crowd, dtype=bool),
                name=file_name,
            )
        )
    problems.warn_summary(stacklevel=3)
    return DetectionData(records=records, class_names=names, category_ids=cat_ids, name=name)
