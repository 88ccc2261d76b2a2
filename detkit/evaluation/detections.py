"""The detections file: what ``tools/infer.py`` writes and ``tools/eval.py`` scores.

Format (the COCO "results" format, so pycocotools and other tools read it too)
------------------------------------------------------------------------------
A JSON **list** with one object per detected box::

    [
      {"image_id": 3, "category_id": 1, "bbox": [48.0, 240.0, 147.5, 109.0], "score": 0.93,
       "file_name": "BloodImage_00003.jpg"},
      ...
    ]

* ``image_id`` (int): the image's id in the data set (``Record.image_id``: the COCO id for COCO
  data, the position in the split list for VOC data). May be left out when ``file_name`` is given.
* ``category_id`` (int): the class's external id, ``DetectionData.category_ids`` (the COCO
  category id, or ``1..K`` in class-list order for VOC data).
* ``bbox`` (4 numbers): ``[x, y, width, height]`` in pixels of the **original** image, continuous
  coordinates with ``(0, 0)`` the top-left corner of the top-left pixel (the COCO convention;
  a VOC box ``xmin..xmax`` 1-based inclusive is ``x = xmin - 1``, ``width = xmax - xmin + 1``).
  Width and height must not be negative.
* ``score`` (number): the detection's confidence; higher is better; must be finite.
* ``file_name`` (string, optional): when present it identifies the image instead of
  ``image_id``; it is matched against the image file's base name (``000005.jpg``), its full path,
  or the record's name (``000005``), so a file written by ``tools/infer.py`` on a folder can be
  scored without knowing the data set's ids. If a name fits several images, ``image_id`` decides.

Images without any entry simply have no detections. Other keys are ignored. A file that breaks
these rules is rejected with a ``DetectionsFileError`` naming the file and the entry index.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from detkit.data.record import DetectionData
from detkit.utils.atomic import atomic_write

__all__ = ["DetectionsFileError", "save_detections", "load_detections", "to_coco_results"]

Detections = dict[int, dict[str, np.ndarray]]
REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


class DetectionsFileError(ValueError):
    """A detections file is not in the format above; the message names the file and the entry."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def to_coco_results(detections: Detections, data: DetectionData, *, with_file_name: bool = True) -> list[dict]:
    """In-memory detections -> the list of entries above (boxes xyxy -> ``[x, y, w, h]``).

    Raises ``ValueError`` for an image id not in ``data``, a label outside ``0..K-1`` or a
    non-finite box or score.
    """
    records = data.by_id()
    out = []
    for image_id, det in detections.items():
        rec = records.get(int(image_id))
        if rec is None:
            raise ValueError(f"detections for image_id {image_id}, which is not in {data.name or 'the data'}")
        # float64 keeps x + (x1 - x) == x1 exactly for float32 inputs, so files round-trip.
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(det["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(det["labels"], dtype=np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"detections of image_id {image_id}: boxes, scores and labels differ in length")
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"detections of image_id {image_id}: non-finite box or score")
        if len(labels) and (labels.min() < 0 or labels.max() >= data.num_classes):
            raise ValueError(f"detections of image_id {image_id}: label outside 0..{data.num_classes - 1}")
        for box, score, label in zip(boxes, scores, labels):
            entry = {
                "image_id": int(rec.image_id),
                "category_id": int(data.category_ids[label]),
                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                "score": float(score),
            }
            if with_file_name:
                entry["file_name"] = os.path.basename(rec.file_name)
            out.append(entry)
    return out


def save_detections(path: str | os.PathLike, detections: Detections, data: DetectionData) -> Path:
    """Write detections (``{image_id: {"boxes" (D,4) xyxy, "scores" (D,), "labels" (D,)}}``) as a
    detections file, atomically (:func:`detkit.utils.atomic.atomic_write`: a temporary file in the
    same folder, then ``os.replace``; a failed write leaves the old file as it was)."""
    path = Path(path)
    entries = to_coco_results(detections, data)
    with atomic_write(path, "w") as f:
        json.dump(entries, f, allow_nan=False)
    return path


def _name_index(data: DetectionData) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for r in data.records:
        keys = {os.path.basename(r.file_name), r.file_name, os.fspath(Path(r.file_name).as_posix())}
        if r.name:
            keys.add(r.name)
        for key in keys:
            index.setdefault(key, []).append(r.image_id)
    return index


def load_detections(path: str | os.PathLike, data: DetectionData, *,
                    skipped: list[str] | None = None) -> Detections:
    """Read a detections file (module docstring) into ``{image_id: {"boxes": (D, 4) float32 xyxy,
    "scores": (D,) float32, "labels": (D,) int64 0..K-1}}`` with an entry for every image of
    ``data`` (empty arrays where the file has none), detections in file order.

    ``skipped``: when a list, an entry whose ``file_name`` is not an image of ``data`` (detections
    of a whole folder scored against one split) is left out and its file name appended to it,
    instead of being an error.

    Raises ``FileNotFoundError`` for a missing file and ``DetectionsFileError`` (a ``ValueError``)
    naming the file and entry index for anything malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detections file not found")
    try:
        entries = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise DetectionsFileError(f"{path}: not a text (JSON) file: {e}") from None
    except json.JSONDecodeError as e:
        raise DetectionsFileError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(entries, list):
        raise DetectionsFileError(
            f"{path}: expected a JSON list of detections, found a JSON {type(entries).__name__}")

    known_ids = {r.image_id for r in data.records}
    label_of = {int(c): k for k, c in enumerate(data.category_ids)}
    names = _name_index(data)
    per_image: dict[int, list] = {r.image_id: [] for r in data.records}
    for i, e in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(e, dict):
            raise DetectionsFileError(f"{where}: expected an object, found {type(e).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in e and not (k == "image_id" and "file_name" in e)]
        if missing:
            raise DetectionsFileError(f"{where}: missing key(s) {', '.join(missing)}")
        image_id = e.get("image_id")
        if image_id is not None and not _is_int(image_id):
            raise DetectionsFileError(f"{where}: image_id must be an integer, got {image_id!r}")
        if "file_name" in e:
            fn = e["file_name"]
            if not isinstance(fn, str):
                raise DetectionsFileError(f"{where}: file_name must be a string, got {fn!r}")
            cands = names.get(fn) or names.get(os.path.basename(fn)) or names.get(Path(fn).stem) or []
            cands = sorted(set(cands))
            if not cands and skipped is not None:
                skipped.append(fn)
                continue
            if not cands:
                raise DetectionsFileError(f"{where}: file_name {fn!r} is not an image of {data.name or 'the data'}")
            if len(cands) > 1:
                if image_id not in cands:
                    raise DetectionsFileError(
                        f"{where}: file_name {fn!r} fits {len(cands)} images; give its image_id to choose")
                cands = [image_id]
            image_id = cands[0]
        elif image_id not in known_ids:
            raise DetectionsFileError(f"{where}: unknown image_id {image_id} (not in {data.name or 'the data'})")
        cat = e["category_id"]
        if not _is_int(cat) or cat not in label_of:
            raise DetectionsFileError(
                f"{where}: unknown category_id {cat!r} (known: {sorted(label_of)})")
        bbox = e["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            raise DetectionsFileError(f"{where}: bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise DetectionsFileError(f"{where}: bbox has a non-finite value {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DetectionsFileError(f"{where}: bbox has a negative width or height {bbox!r}")
        score = e["score"]
        if not _is_num(score) or not math.isfinite(score):
            raise DetectionsFileError(f"{where}: score must be a finite number, got {score!r}")
        per_image[image_id].append((bbox, float(score), label_of[cat]))

    out: Detections = {}
    for image_id, items in per_image.items():
        b = np.array([[x, y, x + w, y + h] for (x, y, w, h), _, _ in items], dtype=np.float64).reshape(-1, 4)
        out[image_id] = {
            "boxes": b.astype(np.float32),
            "scores": np.array([s for _, s, _ in items], dtype=np.float32),
            "labels": np.array([lab for _, _, lab in items], dtype=np.int64),
        }
    return out
