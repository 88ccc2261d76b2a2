"""Build tiny VOC trees, images and broken files in a temporary folder (shared by the data tests).

``make_voc(root, spec, splits)`` writes ``root/{Annotations,JPEGImages,ImageSets/Main}``. ``spec``
maps an image id to a dict (every key optional):

    objects   list of ``(name, (xmin, ymin, xmax, ymax))`` or dicts ``{"name", "box",
              "difficult", "truncated"}``; box values are written as given (strings allowed,
              ``None`` leaves the tag out); ``box=None`` leaves out ``<bndbox>``
    size      ``(w, h)`` written in ``<size>`` (default: the image size); ``None`` leaves ``<size>`` out
    image     ``"jpeg"`` (default), ``"png"``, ``"truncated"``, ``"text"`` or ``None`` (no file)
    image_size  real pixel size of the written image, default ``(64, 48)``
    xml       ``None``: no annotation file; a string: written verbatim (malformed XML)
    filename  the ``<filename>`` text (default ``<id>.jpg``); ``""`` leaves the tag out
    extra     raw XML inserted into ``<annotation>`` (``<folder>``, ``<path>`` ...)
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_SIZE = (64, 48)


def pixels(size=DEFAULT_SIZE, seed: int = 0) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 test pattern."""
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def jpeg_bytes(size=DEFAULT_SIZE, **save_kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels(size)).save(buf, "JPEG", **save_kw)
    return buf.getvalue()


def write_image(path: Path, kind: str = "jpeg", size=DEFAULT_SIZE) -> Path:
    """Write a test image: ``jpeg``, ``png``, ``truncated`` (a JPEG cut in half) or ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jpeg":
        path.write_bytes(jpeg_bytes(size))
    elif kind == "png":
        Image.fromarray(pixels(size)).save(path, "PNG")
    elif kind == "truncated":
        data = jpeg_bytes(size)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an image\n")
    else:
        raise ValueError(kind)
    return path


def _obj_xml(obj) -> str:
    if not isinstance(obj, dict):
        obj = {"name": obj[0], "box": obj[1]}
    parts = [f"<name>{obj['name']}</name>"] if obj.get("name") is not None else []
    for tag in ("truncated", "difficult"):
        if obj.get(tag) is not None:
            parts.append(f"<{tag}>{obj[tag]}</{tag}>")
    box = obj.get("box")
    if box is not None:
        coords = "".join(
            f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box) if v is not None
        )
        parts.append(f"<bndbox>{coords}</bndbox>")
    return "<object>" + "".join(parts) + "</object>"


def voc_xml(image_id: str, entry: dict) -> str:
    """The annotation XML for one ``spec`` entry (module docstring)."""
    filename = entry.get("filename", f"{image_id}.jpg")
    size = entry.get("size", entry.get("image_size", DEFAULT_SIZE))
    body = [entry.get("extra", "")]
    if filename:
        body.append(f"<filename>{filename}</filename>")
    if size is not None:
        body.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    body.extend(_obj_xml(o) for o in entry.get("objects", []))
    return "<annotation>" + "".join(body) + "</annotation>\n"


def make_voc(root: Path, spec: dict[str, dict], splits: dict[str, list[str]]) -> Path:
    """Write a VOC tree under ``root`` (module docstring); returns ``root``."""
    root = Path(root)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, entry in spec.items():
        xml = entry.get("xml", voc_xml(image_id, entry))
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        kind = entry.get("image", "jpeg")
        if kind is not None:
            name = entry.get("filename") or f"{image_id}.jpg"
            write_image(root / "JPEGImages" / name, kind, entry.get("image_size", DEFAULT_SIZE))
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root
