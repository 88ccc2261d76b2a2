"""A small synthetic detection data set in Pascal VOC layout, for the README demo and the tests.

Four object classes, each a distinct shape in its own hue range, so that a tiny CNN detector
can learn them on the CPU in minutes:

=========== ============================== =========================
class       shape                           colour (OpenCV hue 0-179)
=========== ============================== =========================
circle      filled disc                     red      (0-8)
square      filled square, rotated <= 20°   blue     (105-125)
triangle    filled triangle, rotated <= 20° green    (50-70)
cross       plus sign, rotated <= 20°       yellow   (24-32)
=========== ============================== =========================

Backgrounds are cluttered but never object-like: a two-colour gradient in desaturated colours,
greyish ellipse blobs, thin random lines, then a light blur and pixel noise. Each image is
160-320 px per side (independently, so the aspect ratio varies), with 1-6 objects of 20-120 px
that may overlap a little (box IoU <= 0.35, and no object loses more than 30 % of its pixels to
later ones;
objects of the same class never overlap). About 6 % of objects are tiny (8-14 px) and marked
``difficult=1``. Boxes are the exact extent of each object's drawn pixels.

Output (``make_synthetic_voc``)::

    root/Annotations/000000.xml ...        VOC XML, 1-based inclusive pixel coordinates
    root/JPEGImages/000000.jpg ...
    root/ImageSets/Main/{train,val,trainval,test}.txt

Image ``i`` depends only on ``(seed, i)`` (not on ``num_images``), and the split assignment only on
``(seed, num_images, splits)``, so the same call always writes the same files.
"""
from __future__ import annotations

import math
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

# class -> (inclusive OpenCV hue range, 0..179)
CLASS_HUES: dict[str, tuple[int, int]] = {
    "circle": (0, 8),
    "square": (105, 125),
    "triangle": (50, 70),
    "cross": (24, 32),
}
DEFAULT_CLASSES: tuple[str, ...] = tuple(CLASS_HUES)
DEFAULT_SPLITS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}

_TINY_PROB = 0.06  # fraction of objects drawn tiny and marked difficult
_TINY_SIZE = (8, 14)
_MAX_IOU = 0.35  # allowed box overlap between objects
_MAX_OCCLUSION = 0.3  # a new object may hide at most this fraction of an earlier one's pixels


def _hsv_colour(rng: np.random.Generator, hue: tuple[int, int], sat: tuple[int, int], val: tuple[int, int]):
    h = rng.integers(hue[0], hue[1] + 1)
    s = rng.integers(sat[0], sat[1] + 1)
    v = rng.integers(val[0], val[1] + 1)
    bgr = cv2.cvtColor(np.uint8([[[h, s, v]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def _grey_colour(rng: np.random.Generator):
    """A desaturated colour (HSV saturation <= 50): background material, never an object's hue."""
    return _hsv_colour(rng, (0, 179), (0, 50), (40, 230))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c0 = np.array(_grey_colour(rng), np.float32)
    c1 = np.array(_grey_colour(rng), np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * math.cos(theta) + ys * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = (c0 + (c1 - c0) * t[..., None]).astype(np.uint8)
    for _ in range(rng.integers(2, 7)):  # blobs
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(8, 50)), int(rng.integers(8, 50)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, _grey_colour(rng), -1)
    for _ in range(rng.integers(2, 9)):  # thin lines, any hue: too thin to be an object
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = _hsv_colour(rng, (0, 179), (0, 255), (40, 255))
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _rotated(points: np.ndarray, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float32)
    return points @ rot.T


def _shape_mask(cls: str, h: int, w: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Binary mask of one object whose extent is about ``size`` px around ``(cx, cy)``."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    if cls == "circle":
        cv2.circle(mask, (int(round(cx)), int(round(cy))), max(int(round(r)), 1), 255, -1)
        return mask
    if cls == "square":
        half = r / (abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle))))
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]], np.float32)
    elif cls == "triangle":
        ang = np.radians([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(ang), np.sin(ang)], 1).astype(np.float32) * r
        pts[:, 1] += r * 0.25  # centre the triangle's bounding box vertically
    elif cls == "cross":
        a, t = r * 0.8, r * 0.8 / 3  # arm half-length, half-thickness (before rotation)
        pts = np.array([[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t],
                        [t, a], [-t, a], [-t, t], [-a, t], [-a, -t], [-t, -t]], np.float32) * 1.2
    else:
        raise ValueError(f"unknown synthetic class {cls!r}; known: {sorted(CLASS_HUES)}")
    pts = _rotated(pts, angle) + np.array([cx, cy], np.float32)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def synthesize_image(
    rng: np.random.Generator,
    *,
    image_size: tuple[int, int] = (160, 320),
    object_size: tuple[int, int] = (20, 120),
    classes: Sequence[str] = DEFAULT_CLASSES,
    max_objects: int = 6,
) -> tuple[np.ndarray, list[dict]]:
    """Draw one image. Returns ``(image (H, W, 3) uint8 BGR, objects)``.

    Each object is ``{"name", "box": [x0, y0, x1, y1] 0-based continuous, "difficult": bool}``;
    the box is the extent of the object's own drawn pixels (columns ``a..b`` give ``[a, b + 1]``).
    """
    lo, hi = image_size
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    img = _background(rng, h, w)
    objects: list[dict] = []
    boxes: list[np.ndarray] = []
    owner = np.full((h, w), -1, np.int16)  # which object each pixel shows (-1: background)
    area: list[int] = []  # drawn pixels per object, for the occlusion test
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = classes[int(rng.integers(len(classes)))]
        tiny = rng.random() < _TINY_PROB
        smax = min(object_size[1], int(0.7 * min(h, w)))
        size = float(rng.integers(*_TINY_SIZE)) if tiny else float(rng.integers(object_size[0], smax + 1))
        angle = float(rng.uniform(-20, 20))
        for _attempt in range(30):
            cx = rng.uniform(size / 2 + 1, w - size / 2 - 1)
            cy = rng.uniform(size / 2 + 1, h - size / 2 - 1)
            mask = _shape_mask(cls, h, w, cx, cy, size, angle)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            if any(_iou(box, b) > _MAX_IOU for b in boxes):
                continue
            # Box IoU alone allows a small object to vanish under a large one: bound the pixels
            # each earlier object would lose (it keeps its full-extent box as its label).
            under = owner[ys, xs]
            hidden = np.bincount(under[under >= 0], minlength=len(area))
            # Same-class objects never touch: same hue on same hue would merge into one blob.
            if all(hidden[j] <= _MAX_OCCLUSION * area[j] and not (hidden[j] and objects[j]["name"] == cls)
                   for j in range(len(area))):
                break
        else:
            continue  # no free place for this object: leave it out
        img[mask > 0] = _hsv_colour(rng, CLASS_HUES[cls], (150, 255), (170, 255))
        owner[ys, xs] = len(area)
        area.append(len(xs))
        boxes.append(box)
        objects.append({"name": cls, "box": box.tolist(), "difficult": bool(tiny)})
    img = cv2.GaussianBlur(img, (3, 3), 0)
    noise = rng.integers(-10, 11, size=img.shape, dtype=np.int16)
    img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return img, objects


def _voc_xml(image_name: str, w: int, h: int, objects: list[dict]) -> ET.ElementTree:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = image_name
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "detkit synthetic shapes"
    size = ET.SubElement(ann, "size")
    for k, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(ann, "segmented").text = "0"
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        ob = ET.SubElement(ann, "object")
        ET.SubElement(ob, "name").text = o["name"]
        ET.SubElement(ob, "pose").text = "Unspecified"
        ET.SubElement(ob, "truncated").text = "0"
        ET.SubElement(ob, "difficult").text = "1" if o["difficult"] else "0"
        bb = ET.SubElement(ob, "bndbox")
        # 0-based continuous [x0, x1) -> VOC 1-based inclusive: xmin = x0 + 1, xmax = x1.
        for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, k).text = str(int(round(v)))
    tree = ET.ElementTree(ann)
    ET.indent(tree)
    return tree


def split_ids(ids: Sequence[str], splits: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Assign ``ids`` to disjoint splits by fraction (seeded shuffle; the last split takes the rest)."""
    if not splits or any(f < 0 for f in splits.values()) or not math.isclose(sum(splits.values()), 1.0):
        raise ValueError(f"splits must be non-negative fractions summing to 1, got {dict(splits)}")
    order = np.random.default_rng([seed, len(ids), 7]).permutation(len(ids))
    out: dict[str, list[str]] = {}
    start = 0
    names = list(splits)
    for k, name in enumerate(names):
        end = len(ids) if k == len(names) - 1 else start + int(round(splits[name] * len(ids)))
        out[name] = sorted(ids[i] for i in order[start:end])
        start = end
    return out


def make_synthetic_voc(
    root: str | Path,
    *,
    num_images: int = 300,
    image_size: tuple[int, int] = (160, 320),
    object_size: tuple[int, int] = (20, 120),
    classes: Sequence[str] = DEFAULT_CLASSES,
    seed: int = 0,
    splits: Mapping[str, float] = DEFAULT_SPLITS,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic set (module docstring) under ``root`` and return ``root``.

    Args:
        root: output folder (created).
        num_images: number of images.
        image_size: ``(min, max)`` side length in pixels, drawn independently for width and height.
        object_size: ``(min, max)`` object extent in pixels (capped at 70 % of the shorter side).
        classes: a subset of ``CLASS_HUES``; objects are drawn uniformly from it.
        seed: everything is a function of the seed.
        splits: split name -> fraction; ``trainval.txt`` (train + val) is added when both exist.
        overwrite: replace an existing set in ``root``; without it an existing set is an error.
    """
    root = Path(root)
    unknown = [c for c in classes if c not in CLASS_HUES]
    if unknown or not classes:
        raise ValueError(f"unknown synthetic classes {unknown}; choose from {sorted(CLASS_HUES)}")
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if not 0 < image_size[0] <= image_size[1]:
        raise ValueError(f"image_size must be (min, max) with 0 < min <= max, got {image_size}")
    if not 0 < object_size[0] <= object_size[1] or object_size[0] > 0.7 * image_size[0]:
        raise ValueError(f"object_size {object_size} must be (min, max) with min <= 70% of the smallest side")
    subdirs = [root / "Annotations", root / "JPEGImages", root / "ImageSets" / "Main"]
    if (root / "Annotations").exists() and any((root / "Annotations").iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{root}: a data set already exists here "
                "(pass overwrite=True, or --overwrite to tools/make_synthetic.py, to replace it)"
            )
        for d in subdirs:
            shutil.rmtree(d, ignore_errors=True)
    for d in subdirs:
        d.mkdir(parents=True, exist_ok=True)

    ids = [f"{i:06d}" for i in range(num_images)]
    for i, name in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        img, objects = synthesize_image(rng, image_size=image_size, object_size=object_size, classes=classes)
        if not cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"{root / 'JPEGImages' / (name + '.jpg')}: could not write image")
        tree = _voc_xml(f"{name}.jpg", img.shape[1], img.shape[0], objects)
        tree.write(root / "Annotations" / f"{name}.xml", encoding="utf-8", xml_declaration=False)

    parts = split_ids(ids, splits, seed)
    if "train" in parts and "val" in parts and "trainval" not in parts:
        parts["trainval"] = sorted(parts["train"] + parts["val"])
    for split, names in parts.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    return root
