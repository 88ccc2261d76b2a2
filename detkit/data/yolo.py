"""The Ultralytics YOLO layout: image folders, one ``.txt`` of labels per image, ``data.yaml`` with names.

    root/
      data.yaml              names: [cat, dog]   (or {0: cat, 1: dog}); optional path, train, val, test
      images/train/a.jpg     labels/train/a.txt  one line per object: ``class cx cy w h``
      images/val/b.jpg       labels/val/b.txt    (class index; centre and size as fractions of the image)

A split's image folder is ``data.yaml``'s entry for it (relative to its ``path:``, else to the
root), else ``images/<split>``. Every image in it (sorted; sub-folders too) is a record; its labels
are the file at the same place under ``labels/`` (Ultralytics' rule: the last ``images`` folder of
the path becomes ``labels``, the extension ``.txt``). An image without a label file, or with an
empty one, is a negative image (kept unless ``keep_empty=False``). Boxes become detkit's 0-based
continuous xyxy pixels (``detkit.data.record``).

Faults follow the strict/lenient policy of ``problems.py``: a line that is not five numbers
(``malformed_line``) or names a class index outside ``names`` (``unknown_class``) is dropped; a box
of zero size, wholly outside or partly outside the image is dropped or clipped (``repair_box``); an
image that cannot be read is skipped. Written here because no well-kept library reads this layout
into plain boxes without bringing a training framework along.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from detkit.data.images import ImageReadError, image_size, read_image
from detkit.data.problems import DataError, DataProblems, repair_box
from detkit.data.record import DetectionData, Record

__all__ = ["IMAGE_EXTENSIONS", "load_yolo", "read_names", "label_path"]

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def read_names(root: str | os.PathLike) -> tuple[list[str], dict]:
    """``(class names in index order, the whole data.yaml)`` of a YOLO root.

    Raises:
        DataError: ``data.yaml`` is missing, not YAML, or has no usable ``names``.
    """
    path = Path(root) / "data.yaml"
    if not path.is_file():
        raise DataError("no data.yaml (the YOLO layout keeps the class names there: names: [a, b])", file=path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"not valid YAML ({e})", file=path) from None
    names = spec.get("names") if isinstance(spec, dict) else None
    if isinstance(names, dict):
        try:
            order = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"names: keys must be class indices 0..K-1, got {sorted(names)}", file=path) from None
        if order != list(range(len(order))):
            raise DataError(f"names: class indices must be 0..{len(order) - 1} without gaps, got {order}", file=path)
        names = [names[k] if k in names else names[str(k)] for k in order]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise DataError("names must be a non-empty list of class names (or {index: name})", file=path)
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"names has duplicates: {names}", file=path)
    return names, spec


def _split_folder(root: Path, spec: dict, split: str) -> Path:
    entry = spec.get(split)
    if isinstance(entry, str) and entry:
        # path: the set's root as its author wrote it (often a folder of their own machine): used
        # when it exists here, relative to data.yaml's folder when relative; otherwise data.yaml's folder.
        base, given = root, spec.get("path")
        if isinstance(given, str) and given not in ("", "."):
            candidate = Path(given) if Path(given).is_absolute() else root / given
            base = candidate if candidate.is_dir() else root
        folder = Path(entry) if Path(entry).is_absolute() else base / entry
    else:
        folder = root / "images" / split
    if not folder.is_dir():
        known = sorted(p.name for p in (root / "images").iterdir() if p.is_dir()) if (root / "images").is_dir() else []
        raise DataError(f"split {split!r}: image folder {folder} not found"
                        + (f" (images/ has: {', '.join(known)})" if known else ""), file=root / "data.yaml")
    return folder


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _objects(txt: Path, w: int, h: int, num_names: int, problems: DataProblems) -> list[tuple[int, tuple]]:
    """The ``(class index, xyxy box)`` objects of one label file (faults reported, bad lines dropped)."""
    objects = []
    for n, line in enumerate(txt.read_text(errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(values) != 5 or not all(math.isfinite(v) for v in values) or values[0] != int(values[0]):
            problems.report("malformed_line", txt, f"line {n}: {line.strip()!r} is not 'class cx cy w h'")
            continue
        k, cx, cy, bw, bh = int(values[0]), *values[1:]
        if not 0 <= k < num_names:
            problems.report("unknown_class", txt, f"line {n}: class {k} is not in names (0..{num_names - 1})")
            continue
        box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
        box = repair_box(box, w, h, problems, txt, f"line {n}")
        if box is not None:
            objects.append((k, box))
    return objects


def load_yolo(root: str | os.PathLike, split: str = "train", class_names: Sequence[str] | None = None, *,
              keep_empty: bool = True, strict: bool = False, check_images: bool = False,
              name: str | None = None) -> DetectionData:
    """Load one split of a YOLO-layout data set (module docstring).

    Args:
        root: the folder holding ``data.yaml``.
        split: ``train``, ``val``, ``test`` (a key of ``data.yaml``, or a folder under ``images/``).
        class_names: a subset (or reordering) of ``data.yaml``'s names to train on; objects of other
            classes are dropped (``unknown_class``). ``None``: all of them, in index order.
        keep_empty: keep images without objects (negatives).
        strict: raise ``DataError`` naming the file at the first fault instead of repairing,
            counting and warning once.
        check_images: decode every image now (corrupt files found before training).
        name: short name for messages; default ``"yolo:<root>/<split>"``.
    """
    root = Path(root)
    name = name or f"yolo:{root.resolve().name}/{split}"
    names, spec = read_names(root)
    folder = _split_folder(root, spec, split)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"{name}: class_names has duplicates: {class_names}")
    wanted = class_names if class_names is not None else names
    label_of = {names.index(c): i for i, c in enumerate(wanted) if c in names}
    problems = DataProblems(name, strict=strict)
    images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    records = []
    for path in tqdm(images, desc=f"loading {name}", unit="img", disable=len(images) < 500, leave=False):
        try:
            h, w = read_image(path).shape[:2] if check_images else image_size(path)[::-1]
        except ImageReadError as e:
            problems.report("corrupt_image", path, f"image unreadable: {e}")
            continue
        txt = label_path(path)
        objects = _objects(txt, w, h, len(names), problems) if txt.is_file() else []
        kept = []
        for k, box in objects:
            if k in label_of:
                kept.append((label_of[k], box))
            else:
                problems.report("unknown_class", txt, f"class {names[k]!r} is not in the class list")
        if not kept and not keep_empty:
            continue
        records.append(Record(image_id=len(records), file_name=str(path), width=int(w), height=int(h),
                              boxes=np.array([b for _, b in kept], dtype=np.float32).reshape(-1, 4),
                              labels=np.array([k for k, _ in kept], dtype=np.int64),
                              name=str(path.relative_to(folder).with_suffix(""))))
    problems.warn_summary(stacklevel=3)
    return DetectionData(records=records, class_names=list(wanted), name=name)
