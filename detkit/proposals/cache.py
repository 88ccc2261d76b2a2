"""Selective search for a whole data set split: computed in parallel, cached on disk, resumable.

Cache layout (one folder per data set split, mode and search size)::

    <cache_dir>/<data.name as a slug>-<mode>-<max_side or "full">/
        settings.json          the search settings (checked when the cache is reused)
        000000.npz ...         one compressed .npz per image, named by image_id (6+ digits):
                               boxes   (P, 4) float32 xyxy, 0-based continuous ORIGINAL-image coords
                               name    the image's name (its VOC id / COCO file name), checked on load
                               seconds the search time of that image, in seconds (one CPU core)

e.g. ``outputs/proposals/voc_bccd_test-fast-500/``. Every file is written to a temporary name and
renamed (atomic), so an interrupted run leaves only whole files; the next run computes just the
images that have none. Proposals are independent of the split they were computed for, but the key
keeps splits apart because VOC image ids are positions in the split list.

User-supplied proposals (``read_proposals_file`` / ``write_proposals_file``): one file mapping each
image's **name** (``Record.name``: the VOC image id such as ``"000005"``, or the COCO file name; the
image's file name or its stem also match) to its boxes, ``(P, 4)`` xyxy 0-based continuous pixel
coordinates of the original image, best first:

* ``.npz``: one array per image, the name is the array's key (``np.savez(path, **{name: boxes})``);
  read with ``allow_pickle=False``, so a file cannot run code;
* ``.json``: ``{"<name>": [[x0, y0, x1, y1], ...], ...}``.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from detkit.data.images import read_image
from detkit.data.problems import DataError
from detkit.data.record import DetectionData, Record
from detkit.proposals.selective_search import MODES, selective_search

__all__ = [
    "ProposalsError",
    "cache_folder",
    "compute_proposals",
    "load_proposals",
    "read_proposals_file",
    "write_proposals_file",
]


class ProposalsError(DataError):
    """A proposals cache or file is missing, incomplete or malformed. The message names the path."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "data"


def cache_folder(cache_dir: str | os.PathLike, data: DetectionData, *, mode: str = "fast",
                 max_side: int | None = 500) -> Path:
    """``<cache_dir>/<slug of data.name>-<mode>-<max_side|full>``: the folder of one cache."""
    if not data.name:
        raise ValueError("cache_folder: the data set has no name (DetectionData.name) to key the cache by")
    return Path(cache_dir) / f"{_slug(data.name)}-{mode}-{max_side if max_side else 'full'}"


def _image_file(folder: Path, image_id: int) -> Path:
    return folder / f"{image_id:06d}.npz"


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _worker_init() -> None:
    # Parallelism comes from the processes; OpenCV threads inside each would only fight for cores.
    cv2.setNumThreads(1)


def _search_one(job: tuple) -> tuple[int, int, float]:
    """Worker: read one image, search it, write its file. Returns ``(image_id, P, seconds)``."""
    image_id, file_name, name, out_file, options = job
    image = read_image(file_name)
    start = time.perf_counter()
    boxes = selective_search(image, **options)
    seconds = time.perf_counter() - start
    _write_atomic(Path(out_file), {"boxes": boxes, "name": np.array(name), "seconds": np.array(seconds)})
    return image_id, len(boxes), seconds


def _check_settings(folder: Path, settings: dict) -> None:
    path = folder / "settings.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ProposalsError(f"unreadable cache settings ({e})", file=path) from None
        if saved != settings:
            raise ProposalsError(
                f"cache was computed with other settings {saved}, not {settings}; "
                "use another --cache-dir or delete this folder", file=path)
    else:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def compute_proposals(
    data: DetectionData,
    cache_dir: str | os.PathLike,
    *,
    mode: str = "fast",
    max_side: int | None = 500,
    min_size: float = 20,
    max_proposals: int | None = None,
    workers: int = 1,
    progress: bool = True,
    on_image: Callable[[int, int, float], None] | None = None,
) -> Path:
    """Run ``selective_search`` on every image of ``data`` that the cache lacks; return the folder.

    Args:
        data: the split; each ``Record.file_name`` is read with ``read_image``.
        cache_dir: parent folder of the caches (module docstring has the layout).
        mode, max_side, min_size, max_proposals: passed to ``selective_search``; ``mode`` and
            ``max_side`` name the folder, all four are stored in ``settings.json`` and must match
            when the cache is reused.
        workers: processes searching images in parallel (each with one OpenCV thread); ``1`` runs
            in this process.
        progress: show a tqdm bar.
        on_image: called in this process after each image is written, as
            ``on_image(image_id, num_boxes, seconds)``; an exception from it stops the run (the
            files written so far stay, and the next call resumes).

    Raises:
        ProposalsError: the folder holds a cache made with other settings.
        ImageReadError: an image cannot be read (names the file).
    """
    if mode not in MODES:
        raise ValueError(f"compute_proposals: mode must be one of {MODES}, got {mode!r}")
    if workers < 1:
        raise ValueError(f"compute_proposals: workers must be >= 1, got {workers}")
    folder = cache_folder(cache_dir, data, mode=mode, max_side=max_side)
    folder.mkdir(parents=True, exist_ok=True)
    options = {"mode": mode, "max_side": max_side, "min_size": min_size, "max_proposals": max_proposals}
    _check_settings(folder, options)
    for stale in folder.glob("*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)

    jobs = [(r.image_id, r.file_name, r.name, str(_image_file(folder, r.image_id)), options)
            for r in data.records if not _image_file(folder, r.image_id).exists()]
    bar = tqdm(total=len(data.records), initial=len(data.records) - len(jobs), unit="img",
               desc=f"selective search {mode} {data.name}", disable=not progress)
    try:
        if workers == 1 or len(jobs) <= 1:
            saved_threads = cv2.getNumThreads()
            _worker_init()
            try:
                for job in jobs:
                    result = _search_one(job)
                    bar.update(1)
                    if on_image is not None:
                        on_image(*result)
            finally:
                cv2.setNumThreads(saved_threads)
        else:
            # spawn, not fork: forking a process that already runs threads (albumentations' and
            # torch's pools, once the training code is imported) can deadlock the children. The
            # workers import only cv2, numpy and detkit.data/proposals (no torch), so starting is cheap.
            method = "spawn"
            with multiprocessing.get_context(method).Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
                for result in pool.imap_unordered(_search_one, jobs):
                    bar.update(1)
                    if on_image is not None:
                        on_image(*result)
    finally:
        bar.close()
    return folder


def load_proposals(
    cache_dir: str | os.PathLike,
    data: DetectionData,
    *,
    mode: str = "fast",
    max_side: int | None = 500,
    max_proposals: int | None = None,
    with_seconds: bool = False,
):
    """Read a cache written by ``compute_proposals`` for every image of ``data``.

    Returns:
        ``{image_id: (P, 4) float32}`` xyxy boxes in ORIGINAL-image coordinates (datasets scale them
        with the image), the first ``max_proposals`` of each (all when ``None``). With
        ``with_seconds=True``, also ``{image_id: search seconds}``.

    Raises:
        ProposalsError: the cache folder is missing, does not cover every image (the message counts
            and names the missing ones), or a file is unreadable or belongs to another image.
    """
    folder = cache_folder(cache_dir, data, mode=mode, max_side=max_side)
    if not folder.is_dir():
        raise ProposalsError("no proposals cache here; compute it with tools/proposals.py "
                             "(or detkit.proposals.cache.compute_proposals)", file=folder)
    missing = [r for r in data.records if not _image_file(folder, r.image_id).exists()]
    if missing:
        names = ", ".join(r.name or str(r.image_id) for r in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ProposalsError(
            f"the cache covers {len(data.records) - len(missing)} of {len(data.records)} images; "
            f"missing {len(missing)} ({names}); run tools/proposals.py again to complete it", file=folder)
    boxes, seconds = {}, {}
    for r in data.records:
        path = _image_file(folder, r.image_id)
        try:
            with np.load(path, allow_pickle=False) as z:
                b, name, sec = z["boxes"], str(z["name"]), float(z["seconds"])
        except (OSError, ValueError, KeyError) as e:
            raise ProposalsError(f"unreadable proposals file ({e})", file=path) from None
        if name != r.name:
            raise ProposalsError(f"holds proposals of image {name!r}, not {r.name!r}: the split changed "
                                 "since the cache was made; delete the folder", file=path)
        boxes[r.image_id] = _check_boxes(b, r, path)[:max_proposals]
        seconds[r.image_id] = sec
    return (boxes, seconds) if with_seconds else boxes


def _check_boxes(boxes, record: Record, file) -> np.ndarray:
    """Validate ``(P, 4)`` boxes of one image and clip them to it."""
    try:
        b = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError):
        raise ProposalsError(f"image {record.name!r}: boxes are not numbers", file=file) from None
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ProposalsError(f"image {record.name!r}: boxes must be (P, 4), got {b.shape}", file=file)
    if not np.isfinite(b).all():
        raise ProposalsError(f"image {record.name!r}: boxes contain NaN or infinity", file=file)
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ProposalsError(f"image {record.name!r}: boxes must be xyxy with x1 >= x0 and y1 >= y0", file=file)
    return np.clip(b, 0, np.array([record.width, record.height] * 2, dtype=np.float32))


def _keys(record: Record) -> list[str]:
    base = os.path.basename(record.file_name)
    return [k for k in (record.name, base, os.path.splitext(base)[0]) if k]


def read_proposals_file(path: str | os.PathLike, data: DetectionData) -> dict[int, np.ndarray]:
    """Read user-supplied proposals (``.npz`` or ``.json``, module docstring) for every image of ``data``.

    Returns ``{image_id: (P, 4) float32}`` original-image xyxy boxes (clipped to the image).

    Raises:
        ProposalsError: unreadable or malformed file, or images of ``data`` it does not cover.
    """
    path = Path(path)
    if not path.is_file():
        raise ProposalsError("proposals file not found", file=path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                table = {k: z[k] for k in z.files}
        elif path.suffix == ".json":
            table = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(table, dict):
                raise ValueError("the top level must be an object {image name: boxes}")
        else:
            raise ProposalsError("unknown proposals file type (use .npz or .json)", file=path)
    except ProposalsError:
        raise
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ProposalsError(f"unreadable proposals file ({e})", file=path) from None
    out, missing = {}, []
    for r in data.records:
        key = next((k for k in _keys(r) if k in table), None)
        if key is None:
            missing.append(r.name)
            continue
        out[r.image_id] = _check_boxes(table[key], r, path)
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ProposalsError(f"no proposals for {len(missing)} of {len(data.records)} images ({shown})", file=path)
    return out


def write_proposals_file(path: str | os.PathLike, proposals: Mapping[int, np.ndarray], data: DetectionData) -> Path:
    """Write ``{image_id: (P, 4) boxes}`` as a user-format file (``.npz`` or ``.json``) keyed by image name."""
    path = Path(path)
    by_id = data.by_id()
    table = {by_id[i].name: np.asarray(b, dtype=np.float32).reshape(-1, 4) for i, b in proposals.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        _write_atomic(path, table)
    elif path.suffix == ".json":
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({k: v.tolist() for k, v in table.items()}, f)
        os.replace(tmp, path)
    else:
        raise ProposalsError("unknown proposals file type (use .npz or .json)", file=path)
    return path
