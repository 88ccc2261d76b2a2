"""Generate a small data set that contains every data fault of issue 8, in VOC and COCO form.

``make_fault_set(root)`` writes::

    root/voc/JPEGImages, Annotations, ImageSets/Main/all.txt     every VOC case in one split
    root/voc/ImageSets/Main/<case>.txt                           one split per case (strict tests)
    root/coco/images/*.jpg, root/coco/all.json, root/coco/<case>.json

and returns a ``FaultSet`` that says what a loader must do with each case. Images are 64-96 px so
that a training iteration over them is cheap. The classes are ``CLASSES``; the object class
``"dog"`` is the "class not in the class list" case (load with ``class_names=CLASSES``).

VOC cases (``VOC_CASES``: id -> (fault kind reported by ``DataProblems`` or ``None``, what it is)):
a readable image is decoded to ``(H, W, 3)`` RGB whatever its format (greyscale JPEG, RGBA PNG,
16-bit PNG, EXIF-rotated JPEG are repaired by ``read_image`` and are not counted as faults).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

CLASSES = ["circle", "square"]
W, H = 96, 64  # default stored image size (width, height)

# id -> (kind the lenient loader counts for it, without / with check_images; description)
VOC_CASES: dict[str, tuple[str | None, str | None, str]] = {
    "good": (None, None, "an RGB JPEG with one valid box"),
    "grey": (None, None, "greyscale (mode L) JPEG"),
    "rgba": (None, None, "RGBA PNG"),
    "png16": (None, None, "16-bit colour PNG"),
    "grey16": (None, None, "16-bit greyscale PNG"),
    "exif": (None, None, "JPEG stored 96x64 with EXIF orientation 6 (shown 64 wide, 96 high)"),
    "missing_image": ("missing_image", "missing_image", "annotation names a file that does not exist"),
    "truncated": (None, "corrupt_image", "JPEG cut in half (header readable, body not)"),
    "not_image": (None, "corrupt_image", "a text file named .jpg"),
    "empty_xml": ("malformed_annotation", "malformed_annotation", "annotation file of 0 bytes"),
    "malformed_xml": ("malformed_annotation", "malformed_annotation", "XML that does not parse"),
    "no_xml": ("missing_annotation", "missing_annotation", "id in the split without an annotation file"),
    "zero_box": ("zero_size_box", "zero_size_box", "box with xmin == xmax"),
    "negative_box": ("zero_size_box", "zero_size_box", "box with xmax < xmin"),
    "outside_box": ("outside_box", "outside_box", "box wholly right of the image"),
    "clipped_box": ("clipped_box", "clipped_box", "box partly outside the image"),
    "nan_box": ("bad_coordinates", "bad_coordinates", "NaN coordinate"),
    "unknown_class": ("unknown_class", "unknown_class", "object of class 'dog', not in CLASSES"),
}
# The duplicate-id case is a line of all.txt ("good" listed twice), reported on the split file.

# COCO case -> kind reported (lenient), description
COCO_CASES: dict[str, tuple[str, str]] = {
    "unknown_category": ("unknown_category", "annotation with category id 99, not in 'categories'"),
    "unknown_image": ("unknown_image", "annotation of image id 4242, not in 'images'"),
    "duplicate_id": ("duplicate_id", "two images with id 1"),
    "missing_image": ("missing_image", "image entry whose file does not exist"),
    "zero_box": ("zero_size_box", "bbox with w = 0"),
    "negative_box": ("zero_size_box", "bbox with h < 0"),
    "outside_box": ("outside_box", "bbox wholly outside the image"),
    "nan_box": ("bad_coordinates", "bbox with a NaN coordinate"),
}


@dataclass
class FaultSet:
    root: Path
    voc_root: Path
    coco_dir: Path
    coco_images: Path
    class_names: list[str] = field(default_factory=lambda: list(CLASSES))

    def coco_json(self, case: str = "all") -> Path:
        return self.coco_dir / f"{case}.json"

    @staticmethod
    def expected_voc_counts(check_images: bool) -> dict[str, int]:
        """kind -> count a lenient ``load_voc(voc_root, "all", CLASSES)`` must report."""
        counts: dict[str, int] = {"duplicate_id": 1}
        for without, with_check, _ in VOC_CASES.values():
            kind = with_check if check_images else without
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    @staticmethod
    def expected_voc_ids(check_images: bool) -> list[str]:
        """Ids of the images a lenient load keeps (in split order)."""
        skip = {"missing_image", "malformed_annotation", "missing_annotation", "corrupt_image"}
        return [i for i, (a, b, _) in VOC_CASES.items() if (b if check_images else a) not in skip]


def _pattern(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8: a smooth gradient plus a bright square (JPEG-friendly, not constant)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 60 + seed)], -1)
    img[h // 4 : h // 2, w // 4 : w // 2] = 240
    return img.astype(np.uint8)


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _xml(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple]]) -> str:
    parts = [f"<annotation><folder>x</folder><filename>{filename}</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, box in objects:
        coords = "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>{coords}</bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


VALID = ("circle", (10, 10, 40, 40))  # VOC 1-based inclusive


def _write_voc(root: Path) -> None:
    img_dir, ann_dir, sets = root / "JPEGImages", root / "Annotations", root / "ImageSets" / "Main"
    for d in (img_dir, ann_dir, sets):
        d.mkdir(parents=True, exist_ok=True)
    rgb = _pattern()
    files: dict[str, str] = {}  # id -> image file name
    (img_dir / "good.jpg").write_bytes(_jpeg(rgb))
    (img_dir / "grey.jpg").write_bytes(_jpeg(rgb[:, :, 0].copy()))
    Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)]), "RGBA").save(img_dir / "rgba.png")
    cv2.imwrite(str(img_dir / "png16.png"), (rgb[:, :, ::-1].astype(np.uint16) * 257))  # BGR uint16
    Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257).save(img_dir / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 96x64, shown 64 wide x 96 high
    (img_dir / "exif.jpg").write_bytes(_jpeg(rgb, exif=exif.tobytes()))
    whole = _jpeg(rgb)
    (img_dir / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (img_dir / "not_image.jpg").write_text("this is a text file, not a JPEG\n")
    files.update(good="good.jpg", grey="grey.jpg", rgba="rgba.png", png16="png16.png", grey16="grey16.png",
                 exif="exif.jpg", truncated="truncated.jpg", not_image="not_image.jpg",
                 missing_image="missing_image.jpg")
    box_cases = {
        "zero_box": ("square", (30, 20, 30, 50)),
        "negative_box": ("square", (50, 20, 30, 50)),
        "outside_box": ("square", (W + 10, 10, W + 40, 40)),
        "clipped_box": ("square", (70, 30, W + 20, H + 20)),
        "nan_box": ("square", (10, "nan", 40, 40)),
        "unknown_class": ("dog", (10, 10, 40, 40)),
    }
    for case in box_cases:
        (img_dir / f"{case}.jpg").write_bytes(_jpeg(rgb))
        files[case] = f"{case}.jpg"

    for case in VOC_CASES:
        if case == "no_xml":
            continue
        path = ann_dir / f"{case}.xml"
        if case == "empty_xml":
            path.write_bytes(b"")
        elif case == "malformed_xml":
            path.write_text("<annotation><filename>good.jpg</filename><object><name>circle</name></annotation>")
        elif case == "exif":  # annotated in the displayed (rotated) frame: 64 wide, 96 high
            path.write_text(_xml(files[case], (H, W), [("circle", (5, 50, 60, 90))]))
        else:
            objects = [VALID] + ([box_cases[case]] if case in box_cases else [])
            path.write_text(_xml(files[case], (W, H), objects))
    ids = list(VOC_CASES)
    all_lines = ids[:1] + ["good"] + ids[1:]  # "good" listed twice: the duplicate-id fault
    (sets / "all.txt").write_text("\n".join(all_lines) + "\n")
    (sets / "duplicate_id.txt").write_text("good\ngood\n")
    for case in ids:
        (sets / f"{case}.txt").write_text(f"{case}\n")


def _write_coco(coco: Path) -> None:
    images = coco / "images"
    images.mkdir(parents=True, exist_ok=True)
    rgb = _pattern()
    (images / "a.jpg").write_bytes(_jpeg(rgb))
    (images / "b.jpg").write_bytes(_jpeg(_pattern(seed=30)))
    categories = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    good_img = {"id": 1, "file_name": "a.jpg", "width": W, "height": H}
    good_ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]}
    extra: dict[str, tuple[list, list]] = {  # case -> (extra images, extra annotations)
        "unknown_category": ([], [{"image_id": 1, "category_id": 99, "bbox": [5, 5, 10, 10]}]),
        "unknown_image": ([], [{"image_id": 4242, "category_id": 1, "bbox": [5, 5, 10, 10]}]),
        "duplicate_id": ([{"id": 1, "file_name": "b.jpg", "width": W, "height": H}], []),
        "missing_image": ([{"id": 3, "file_name": "gone.jpg", "width": W, "height": H}], []),
        "zero_box": ([], [{"image_id": 1, "category_id": 2, "bbox": [5, 5, 0, 10]}]),
        "negative_box": ([], [{"image_id": 1, "category_id": 2, "bbox": [5, 5, 10, -3]}]),
        "outside_box": ([], [{"image_id": 1, "category_id": 2, "bbox": [W + 5, 5, 10, 10]}]),
        "nan_box": ([], [{"image_id": 1, "category_id": 2, "bbox": [5, math.nan, 10, 10]}]),
    }
    assert set(extra) == set(COCO_CASES)

    def dump(name: str, cases: list[str]) -> None:
        imgs, anns = [dict(good_img)], [dict(good_ann)]
        for c in cases:
            imgs += extra[c][0]
            anns += extra[c][1]
        # json writes NaN as the bare token NaN (as Python-made COCO files do); json.loads accepts it.
        (coco / f"{name}.json").write_text(json.dumps({"images": imgs, "annotations": anns, "categories": categories}))

    dump("all", list(COCO_CASES))
    for c in COCO_CASES:
        dump(c, [c])


def make_fault_set(root: str | Path) -> FaultSet:
    """Write the VOC and COCO fault sets under ``root`` (module docstring) and describe them."""
    root = Path(root)
    _write_voc(root / "voc")
    _write_coco(root / "coco")
    return FaultSet(root=root, voc_root=root / "voc", coco_dir=root / "coco", coco_images=root / "coco" / "images")
