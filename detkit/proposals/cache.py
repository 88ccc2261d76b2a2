"""Selective search for whole data sets: computed in parallel, cached on disk per image, resumable.

Cache layout (one folder per set of search settings, one file per image *content*)::

    <cache_dir>/<mode>-<max_side|full>-min<min_size>-k<base_k>-<inc_k>-sigma<sigma>/
        settings.json          the search settings (checked when the folder is reused)
        <32 hex digits>.npz    one compressed .npz per image, named by the BLAKE2b-128 hash of the
                               image FILE's bytes:
                               boxes   (P, 4) float32 xyxy, 0-based continuous ORIGINAL-image coords,
                                       every box the search kept (``max_proposals`` is applied on load)
                               seconds the search time of that image, in seconds (one CPU core)
                               source  the image's path when it was computed (information only)

e.g. ``outputs/proposals/fast-500-min20-k150-150-sigma0.8/``. The key is what the boxes depend on
(the pixels and the settings) and nothing else, so every split, data set name, root path or
machine that reads the same image files with the same settings finds the same boxes: val and test
of one image list are searched once, ``tools/proposals.py`` fills the cache ``tools/train.py``
reads, and a cache carried to another machine (other paths, other mtimes) still fits.
A content hash rather than (path, size, mtime): copies, checkouts and rsync change mtimes and paths
but not the bytes, and an image edited in place gets new boxes. Its cost is one read of each file
(~1 s per GB), memoised per process by (path, size, mtime); a search costs ~1 s per image.

Every file is written to a temporary name and renamed (atomic), so an interrupted run leaves only
whole files; the next run computes just the images that have none. Caches of detkit before this
layout (``<data set>-<mode>-<max_side>/<image_id>.npz``) are not read: compute again.

User-supplied proposals (``read_proposals_file`` / ``write_proposals_file``): one file mapping each
image's **name** (``Record.name``: the VOC image id such as ``"000005"``, or the COCO file name; the
image's file name or its stem also match) to its boxes, ``(P, 4)`` xyxy 0-based continuous pixel
coordinates of the original image, best first:

* ``.npz``: one array per image, the name is the array's key (``np.savez(path, **{name: boxes})``);
  read with ``allow_pickle=False``, so a file cannot run code;
* ``.json``: ``{"<name>": [[x0, y0, x1, y1], ...], ...}``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from detkit.data.images import ImageReadError, read_image
from detkit.data.problems import DataError
from detkit.data.record import DetectionData, Record
from detkit.proposals.selective_search import MODES, selective_search
from detkit.utils.atomic import atomic_write

__all__ = [
    "SEARCH_DEFAULTS",
    "ProposalsError",
    "cache_folder",
    "compute_proposals",
    "image_key",
    "load_proposals",
    "read_proposals_file",
    "search_settings",
    "write_proposals_file",
]

# OpenCV's fast mode with R-CNN's pre/post-processing (detkit.proposals.selective_search).
SEARCH_DEFAULTS: dict[str, Any] = {"mode": "fast", "max_side": 500, "min_size": 20.0,
                                   "base_k": 150, "inc_k": 150, "sigma": 0.8}


class ProposalsError(DataError):
    """A proposals cache or file is missing, incomplete or malformed. The message names the path."""


def search_settings(**settings: Any) -> dict[str, Any]:
    """The full, normalised selective search settings (``SEARCH_DEFAULTS`` filled in): the cache key.

    ``max_side`` 0 or ``None`` means full size (``None``). Raises ``ValueError`` on unknown keys or
    values ``selective_search`` would refuse.
    """
    unknown = set(settings) - set(SEARCH_DEFAULTS)
    if unknown:
        raise ValueError(f"selective search settings: unknown keys {sorted(unknown)} (allowed: {', '.join(SEARCH_DEFAULTS)})")
    s = {**SEARCH_DEFAULTS, **{k: v for k, v in settings.items() if v is not None or k == "max_side"}}
    try:
        out = {"mode": str(s["mode"]), "max_side": int(s["max_side"]) if s["max_side"] else None,
               "min_size": float(s["min_size"]), "base_k": int(s["base_k"]), "inc_k": int(s["inc_k"]),
               "sigma": float(s["sigma"])}
    except (TypeError, ValueError) as e:
        raise ValueError(f"selective search settings: not numbers ({e}): {s}") from None
    if out["mode"] not in MODES:
        raise ValueError(f"selective search settings: mode must be one of {MODES}, got {out['mode']!r}")
    if out["max_side"] is not None and out["max_side"] < 1 or out["min_size"] < 0:
        raise ValueError(f"selective search settings: max_side must be positive (or 0/None) and min_size >= 0: {out}")
    if out["base_k"] < 1 or out["inc_k"] < 0 or out["sigma"] < 0:
        raise ValueError(f"selective search settings: need base_k >= 1, inc_k >= 0, sigma >= 0: {out}")
    return out


def cache_folder(cache_dir: str | os.PathLike, **settings: Any) -> Path:
    """The folder of the cache for these search settings (module docstring), under ``cache_dir``."""
    s = search_settings(**settings)
    return Path(cache_dir) / (f"{s['mode']}-{s['max_side'] or 'full'}-min{s['min_size']:g}"
                              f"-k{s['base_k']}-{s['inc_k']}-sigma{s['sigma']:g}")


@functools.lru_cache(maxsize=None)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime only make the memo forget a file that changed; the key is the content.
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_key(file_name: str | os.PathLike) -> str:
    """The cache key of an image file: 32 hex digits of the BLAKE2b-128 hash of its bytes.

    Raises:
        ImageReadError: the file is missing or unreadable (names it).
    """
    try:
        path = os.path.realpath(file_name)
        st = os.stat(path)
        return _hash_file(path, st.st_size, st.st_mtime_ns)
    except OSError as e:
        raise ImageReadError(f"cannot read image ({e.strerror or e})", file=file_name) from None


def _image_file(folder: Path, key: str) -> Path:
    return folder / f"{key}.npz"


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to ``path`` atomically (:func:`detkit.utils.atomic.atomic_write`)."""
    with atomic_write(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _worker_init() -> None:
    # Parallelism comes from the processes; OpenCV threads inside each would only fight for cores.
    cv2.setNumThreads(1)


def _search_one(job: tuple) -> tuple[int, int, float]:
    """Worker: read one image, search it, write its file. Returns ``(image_id, P, seconds)``."""
    image_id, file_name, out_file, options = job
    image = read_image(file_name)
    start = time.perf_counter()
    boxes = selective_search(image, **options)
    seconds = time.perf_counter() - start
    _write_npz(Path(out_file), {"boxes": boxes, "seconds": np.array(seconds),
                                   "source": np.array(os.fspath(file_name))})
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
                f"cache folder holds boxes of other settings {saved}, not {settings} (renamed by hand?); "
                "use another cache_dir or delete this folder", file=path)
    else:
        with atomic_write(path, "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True)


def compute_proposals(
    data: DetectionData,
    cache_dir: str | os.PathLike,
    *,
    workers: int = 1,
    progress: bool = True,
    on_image: Callable[[int, int, float], None] | None = None,
    **settings: Any,
) -> Path:
    """Run ``selective_search`` on every image of ``data`` whose content the cache lacks; return the folder.

    Args:
        data: the split; each ``Record.file_name`` is hashed (``image_key``) and, when missing from
            the cache, read with ``read_image``. Images with the same bytes are searched once.
        cache_dir: parent folder of the caches (module docstring has the layout).
        workers: processes searching images in parallel (each with one OpenCV thread); ``1`` runs
            in this process.
        progress: show a tqdm bar.
        on_image: called in this process after each image is written, as
            ``on_image(image_id, num_boxes, seconds)``; an exception from it stops the run (the
            files written so far stay, and the next call resumes).
        **settings: ``mode``, ``max_side``, ``min_size``, ``base_k``, ``inc_k``, ``sigma`` of
            ``selective_search`` (``search_settings``; defaults ``SEARCH_DEFAULTS``). Every box the
            search keeps is stored; ``load_proposals`` caps them.

    Raises:
        ProposalsError: the folder's settings.json disagrees with its name.
        ImageReadError: an image cannot be read (names the file).
    """
    if workers < 1:
        raise ValueError(f"compute_proposals: workers must be >= 1, got {workers}")
    options = search_settings(**settings)
    folder = cache_folder(cache_dir, **options)
    folder.mkdir(parents=True, exist_ok=True)
    _check_settings(folder, options)
    for stale in folder.glob("*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)

    jobs, queued = [], set()
    for r in data.records:
        key = image_key(r.file_name)
        if key not in queued and not _image_file(folder, key).exists():
            queued.add(key)
            jobs.append((r.image_id, r.file_name, str(_image_file(folder, key)), options))
    bar = tqdm(total=len(data.records), initial=len(data.records) - len(jobs), unit="img",
               desc=f"selective search {options['mode']} {data.name}", disable=not progress)
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
            with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
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
    max_proposals: int | None = None,
    with_seconds: bool = False,
    **settings: Any,
):
    """Read the cache written by ``compute_proposals`` (same ``settings``) for every image of ``data``.

    Returns:
        ``{image_id: (P, 4) float32}`` xyxy boxes in ORIGINAL-image coordinates (datasets scale them
        with the image), the first ``max_proposals`` of each (all when ``None``). With
        ``with_seconds=True``, also ``{image_id: search seconds}``.

    Raises:
        ProposalsError: the cache folder is missing, does not cover every image (the message counts
            and names the missing ones), or a file is unreadable.
        ImageReadError: an image file of ``data`` cannot be read (to hash it).
    """
    folder = cache_folder(cache_dir, **settings)
    if not folder.is_dir():
        raise ProposalsError("no proposals cache here; compute it with tools/proposals.py "
                             "(or detkit.proposals.cache.compute_proposals)", file=folder)
    files = {r.image_id: _image_file(folder, image_key(r.file_name)) for r in data.records}
    missing = [r for r in data.records if not files[r.image_id].exists()]
    if missing:
        names = ", ".join(r.name or str(r.image_id) for r in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ProposalsError(
            f"the cache covers {len(data.records) - len(missing)} of {len(data.records)} images of {data.name}; "
            f"missing {len(missing)} ({names}); run tools/proposals.py again to complete it", file=folder)
    boxes, seconds = {}, {}
    for r in data.records:
        path = files[r.image_id]
        try:
            with np.load(path, allow_pickle=False) as z:
                b, sec = z["boxes"], float(z["seconds"])
        except (OSError, ValueError, KeyError) as e:
            raise ProposalsError(f"unreadable proposals file ({e}); delete it and compute again", file=path) from None
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
        _write_npz(path, table)
    elif path.suffix == ".json":
        with atomic_write(path, "w") as f:
            json.dump({k: v.tolist() for k, v in table.items()}, f)
    else:
        raise ProposalsError("unknown proposals file type (use .npz or .json)", file=path)
    return path
