"""Robust image reading: every file becomes one ``(H, W, 3)`` uint8 RGB array, or a clear error.

Real data sets mix greyscale, palette, CMYK, RGBA and 16-bit files, and phone photos carry an
EXIF orientation tag instead of rotated pixels. ``read_image`` hides all of that:

* greyscale (``L``, ``1``), palette (``P``), CMYK, YCbCr -> RGB (PIL's conversions);
* RGBA / LA / PA -> RGB by **dropping alpha** (no compositing: the colour stored under a
  transparent pixel is kept; detection data sets use alpha only by accident);
* 16-bit (``I;16`` greyscale, 48/64-bit RGB(A) PNG) -> 8-bit by scaling the full 16-bit range,
  ``round(v * 255 / 65535)`` (PIL alone would drop the low byte of 16-bit RGB; OpenCV keeps it);
* the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so an orientation-6 photo
  stored 640 wide x 480 high comes back ``(640, 480, 3)`` (H=640, W=480);
* the file is **fully decoded**: a truncated or corrupt JPEG/PNG raises ``ImageReadError`` even
  if some other library switched on PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` (with it on,
  PIL silently fills the missing part with grey).

``image_size`` reads only the header (fast; does not detect truncation).
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .problems import DataError

__all__ = ["ImageReadError", "read_image", "image_size"]

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # transpose / rotate 90 or 270 degrees: width <-> height
_SIXTEEN_BIT_RGB = {"RGB;16B", "RGB;16L", "RGBA;16B", "RGBA;16L", "RGBX;16B"}
_SIXTEEN_BIT_GREY = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_truncation_lock = threading.Lock()


class ImageReadError(DataError, OSError):
    """An image file is missing, not an image, truncated or corrupt. The message names the file."""


@contextmanager
def _strict_decoding():
    """Hold ``LOAD_TRUNCATED_IMAGES`` off while decoding (only touched when someone turned it on)."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _truncation_lock:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise ImageReadError("image file not found", file=path)
    if not os.path.isfile(path):
        raise ImageReadError("not a regular file (a folder?)", file=path)


def _open(path: str) -> Image.Image:
    _check_file(path)
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file (no known image format)", file=path) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"image too large to decode safely ({e})", file=path) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"corrupt image header ({e})", file=path) from None


def _scale16(values: np.ndarray) -> np.ndarray:
    """uint16-range values -> uint8 by scaling 0..65535 onto 0..255 (rounded)."""
    v = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(v * (255.0 / 65535.0)).astype(np.uint8)


def _to_rgb(im: Image.Image, path: str, sixteen_bit_rgb: bool) -> Image.Image:
    """Any PIL mode -> an 8-bit ``RGB`` image (module docstring lists the rules)."""
    if sixteen_bit_rgb:
        # PIL reads 48/64-bit PNGs as 8-bit by keeping the high byte; OpenCV gives all 16 bits.
        import cv2

        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if raw is None or raw.dtype != np.uint16 or raw.ndim != 3:
            raise ImageReadError("could not decode 16-bit colour PNG", file=path)
        rgb = _scale16(raw[:, :, 2::-1])  # BGR(A) -> RGB, alpha dropped
        out = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        if "exif" in im.info:  # keep the orientation tag for exif_transpose below
            out.info["exif"] = im.info["exif"]
        return out
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_GREY:
        return Image.fromarray(_scale16(np.asarray(im)), "L").convert("RGB")
    if im.mode == "F":
        raise ImageReadError("32-bit float images are not supported (no defined 0-255 range)", file=path)
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Drop alpha without compositing (see module docstring).
        return im.convert("RGBA").convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageReadError(f"cannot convert image mode {im.mode!r} to RGB ({e})", file=path) from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file fully into an RGB array.

    Args:
        path: image file (any format PIL reads).

    Returns:
        ``(H, W, 3)`` uint8 RGB, after EXIF orientation.

    Raises:
        ImageReadError: (a ``DataError``/``ValueError`` and an ``OSError``) naming the file, when it
            is missing, not an image, truncated or corrupt.
    """
    path = os.fspath(path)
    with _open(path) as im:
        sixteen_bit_rgb = im.format == "PNG" and any(
            isinstance(t.args, str) and t.args in _SIXTEEN_BIT_RGB for t in im.tile
        )
        try:
            with _strict_decoding():
                im.load()
            rgb = _to_rgb(im, path, sixteen_bit_rgb)
        except ImageReadError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise ImageReadError(f"truncated or corrupt image ({e})", file=path) from None
        try:
            rgb = ImageOps.exif_transpose(rgb)
        except Exception:  # a broken EXIF block: keep the pixels as stored (as image_size does)
            pass
        arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # defensive: conversion above always yields RGB
        raise ImageReadError(f"decoded to unexpected shape {arr.shape}", file=path)
    return arr


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, after EXIF orientation; no pixel decoding.

    Raises:
        ImageReadError: naming the file, when it is missing or not an image. A truncated body is
            not detected here (use ``read_image``).
    """
    path = os.fspath(path)
    with _open(path) as im:
        width, height = im.size
        try:
            orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        except Exception:  # a broken EXIF block: PIL raises assorted errors; size stays as stored
            orientation = 1
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return int(width), int(height)
