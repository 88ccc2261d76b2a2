"""Pascal VOC loading: ``ImageSets/Main/<split>.txt`` + ``Annotations/<id>.xml`` -> ``DetectionData``.

Layout read (``root`` is e.g. ``VOCdevkit/VOC2007`` or ``/path/to/bccd``)::

    root/ImageSets/Main/<split>.txt   one image id per line (first token of each line)
    root/Annotations/<id>.xml         <filename>, <size>, <object>s with <name>, <bndbox>,
                                      <difficult>, <truncated>
    root/JPEGImages/<filename>        the image (<folder> and <path> are ignored: annotation tools
                                      write the annotator's own disk there)

Several roots and splits (VOC07+12 style): **every root is paired with every split**
(``load_voc([voc07, voc12], "trainval")`` is "07+12"; ``load_voc(bccd, ["trainval", "test"])`` is
the whole set). ``image_id`` is the position in that combined id list (roots in the given order,
then splits, then lines), so it does not shift when an image is skipped or filtered.

Boxes: VOC's 1-based inclusive ``(xmin, ymin, xmax, ymax)`` become ``(xmin - 1, ymin - 1, xmax,
ymax)`` (record.py); e.g. ``xmin=1, xmax=10`` (pixels 1..10) becomes ``x0=0, x1=10``, width 10.
Faults follow the strict/lenient policy of ``problems.py``; docs/data.md lists them all.
"""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .images import ImageReadError, image_size, read_image
from .problems import DataError, DataProblems, parse_coords, repair_box
from .record import DetectionData, Record

__all__ = ["load_voc", "available_splits"]

# Show a progress bar when decoding every image, or when merely parsing this many annotations.
_BAR_MIN_FILES = 2000
_TRUE = {"1", "true", "yes"}


def _as_list(x) -> list:
    if isinstance(x, (str, os.PathLike)):
        return [x]
    return list(x)


def available_splits(root: str | os.PathLike) -> list[str]:
    """Split names in ``root/ImageSets/Main`` (class-specific ``<class>_<split>`` files left out)."""
    main = Path(root) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    stems = sorted(p.stem for p in main.glob("*.txt"))
    bare = set(stems)
    # VOC ships aeroplane_train.txt etc. beside train.txt; list only the plain splits.
    return [s for s in stems if not (m := re.fullmatch(r".+_(\w+)", s)) or m.group(1) not in bare]


def _read_split(root: Path, split: str) -> list[str]:
    if not root.is_dir():
        raise DataError("VOC root folder not found", file=root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        found = available_splits(root)
        listing = ", ".join(found) if found else f"none (no {root / 'ImageSets' / 'Main'}/*.txt)"
        raise DataError(f"split {split!r} not found; available splits: {listing}", file=split_file)
    ids = []
    for line in split_file.read_text(encoding="utf-8").splitlines():
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            ids.append(tokens[0])
    return ids


def _flag(obj: ET.Element, tag: str) -> bool:
    """``<difficult>``/``<truncated>``: missing or empty -> False; "1"/"true"/"yes" -> True."""
    text = (obj.findtext(tag) or "").strip().lower()
    try:
        return float(text) != 0
    except ValueError:
        return text in _TRUE


def _size(root_el: ET.Element) -> tuple[int, int] | None:
    """``<size>`` as ``(width, height)``, or None when missing, zero or unparseable."""
    try:
        w = int(float(root_el.findtext("size/width") or "nan"))
        h = int(float(root_el.findtext("size/height") or "nan"))
    except (ValueError, OverflowError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _image_path(root: Path, image_id: str, filename: str | None) -> Path | None:
    """``JPEGImages/<filename>`` (basename only), else ``JPEGImages/<id>.jpg``; None if neither exists."""
    folder = root / "JPEGImages"
    candidates = [folder / os.path.basename(filename)] if filename else []
    candidates.append(folder / f"{image_id}.jpg")
    return next((p for p in candidates if p.is_file()), None)


def _load_one(root: Path, image_id: str, problems: DataProblems, class_set, check_images: bool):
    """Parse one annotation. Returns ``(image path, w, h, objects)`` or None when the image is skipped.

    ``objects`` is a list of ``(name, (x0, y0, x1, y1), difficult, truncated)`` in record coords.
    """
    xml_path = root / "Annotations" / f"{image_id}.xml"
    if not xml_path.is_file():
        problems.report("missing_annotation", xml_path, "annotation file not found")
        return None
    try:
        ann = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        problems.report("malformed_annotation", xml_path, f"malformed XML ({e})")
        return None
    if ann.tag != "annotation":
        problems.report("malformed_annotation", xml_path, f"root element is <{ann.tag}>, not <annotation>")
        return None
    filename = (ann.findtext("filename") or "").strip()
    path = _image_path(root, image_id, filename)
    if path is None:
        shown = root / "JPEGImages" / (os.path.basename(filename) or f"{image_id}.jpg")
        problems.report("missing_image", xml_path, f"image file {shown} not found")
        return None
    size = _size(ann)
    try:
        if check_images:  # decode once: corrupt files are found now, not mid-training
            h, w = read_image(path).shape[:2]
            if size is not None and size != (w, h):
                problems.report(
                    "size_mismatch", xml_path, f"<size> says {size[0]}x{size[1]} but {path.name} is {w}x{h}"
                )
        elif size is None:
            w, h = image_size(path)
        else:
            w, h = size
    except ImageReadError as e:
        problems.report("corrupt_image", xml_path, f"image unreadable: {e}")
        return None

    objects = []
    for k, obj in enumerate(ann.findall("object")):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        if not name or bndbox is None:
            problems.report("malformed_object", xml_path, f"object {k} has no <name> or no <bndbox>")
            continue
        if class_set is not None and name not in class_set:
            problems.report("unknown_class", xml_path, f"object {k} has class {name!r}, not in the class list")
            continue
        raw = [bndbox.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
        where = f"object {k} {name!r} (xmin, ymin, xmax, ymax = {', '.join(str(v) for v in raw)})"
        vals = parse_coords(raw, problems, xml_path, where)
        if vals is None:
            continue
        xmin, ymin, xmax, ymax = vals
        # 1-based inclusive -> 0-based continuous; xmax <= xmin (converted width <= 1) is a click.
        box = repair_box((xmin - 1, ymin - 1, xmax, ymax), w, h, problems, xml_path, where, min_size=1.0)
        if box is not None:
            objects.append((name, box, _flag(obj, "difficult"), _flag(obj, "truncated")))
    return path, w, h, objects


def load_voc(
    roots: str | os.PathLike | Sequence[str | os.PathLike],
    splits: str | Sequence[str] = "trainval",
    class_names: Sequence[str] | None = None,
    *,
    keep_empty: bool = True,
    strict: bool = False,
    check_images: bool = False,
    name: str | None = None,
) -> DetectionData:
    """Load one or more VOC splits into a ``DetectionData``.

    Args:
        roots: a VOC root folder, or several (each is paired with every split).
        splits: a split name (``ImageSets/Main/<split>.txt``) or several.
        class_names: the classes, in label order; objects of other classes are dropped (a fault).
            ``None`` discovers them: the sorted unique names of the loaded objects.
        keep_empty: keep images without objects (negatives). ``False`` leaves them out.
        strict: raise ``DataError`` naming the file at the first fault, instead of repairing,
            counting and warning once (``DataWarning``).
        check_images: decode every image once (with a progress bar) so that corrupt files are
            found now (skipped when lenient), and check ``<size>`` against the real size.
        name: short name for messages; default ``"voc:<root>/<split>[+<split>...]"``.

    Returns:
        ``DetectionData``: records with ``boxes`` ``(N, 4)`` float32 xyxy 0-based continuous,
        ``labels`` ``(N,)`` int64, ``difficult``/``truncated`` ``(N,)`` bool (``iscrowd`` all False);
        ``category_ids`` ``1..K``.

    Raises:
        DataError: a missing root or split file (the message lists the available splits); in
            strict mode, any fault (see docs/data.md).
    """
    root_list = [Path(r) for r in _as_list(roots)]
    split_list = [str(s) for s in _as_list(splits)]
    if not root_list or not split_list:
        raise ValueError("load_voc needs at least one root and one split")
    if name is None:
        per_root = [f"{r.resolve().name}/{'+'.join(split_list)}" for r in root_list]
        name = "voc:" + "+".join(per_root)
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"{name}: class_names has duplicates: {class_names}")
    problems = DataProblems(name, strict=strict)

    # The combined id list; a repeated (root, id) keeps its first position.
    entries: list[tuple[Path, str]] = []
    seen: set[tuple[Path, str]] = set()
    for root in root_list:
        for split in split_list:
            for image_id in _read_split(root, split):
                if (root, image_id) in seen:
                    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
                    problems.report("duplicate_id", split_file, f"image id {image_id!r} listed more than once")
                    continue
                seen.add((root, image_id))
                entries.append((root, image_id))

    class_set = None if class_names is None else set(class_names)
    show_bar = check_images or len(entries) >= _BAR_MIN_FILES
    loaded = []  # (position, root, id, (path, w, h, objects))
    for position, (root, image_id) in enumerate(
        tqdm(entries, desc=f"{'checking' if check_images else 'loading'} {name}", unit="img",
             disable=not show_bar, leave=False)
    ):
        result = _load_one(root, image_id, problems, class_set, check_images)
        if result is not None:
            loaded.append((position, image_id, result))

    if class_names is None:
        class_names = sorted({obj[0] for _, _, (_, _, _, objs) in loaded for obj in objs})
    label_of = {c: i for i, c in enumerate(class_names)}

    records = []
    for position, image_id, (path, w, h, objs) in loaded:
        if not objs and not keep_empty:
            continue
        records.append(
            Record(
                image_id=position,
                file_name=str(path),
                width=int(w),
                height=int(h),
                boxes=np.array([o[1] for o in objs], dtype=np.float32).reshape(-1, 4),
                labels=np.array([label_of[o[0]] for o in objs], dtype=np.int64),
                difficult=np.array([o[2] for o in objs], dtype=bool),
                truncated=np.array([o[3] for o in objs], dtype=bool),
                iscrowd=np.zeros(len(objs), dtype=bool),
                name=image_id,
            )
        )
    problems.warn_summary(stacklevel=3)
    return DetectionData(records=records, class_names=list(class_names), name=name)
