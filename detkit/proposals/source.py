"""Proposals for a data split as a config node describes them (``data.proposals`` in configs/data).

Two sources, for the methods that train on precomputed proposals (Fast R-CNN; R-CNN and SPPNet):

* selective search, computed once into a cache (``detkit.proposals.cache``) and reused::

      proposals: {source: selective_search, mode: fast, max_side: 500, min_size: 20,
                  base_k: 150, inc_k: 150, sigma: 0.8, max_proposals: null,
                  cache_dir: outputs/proposals, workers: 2}

  The cache is keyed by each image file's content and the search settings (mode, max_side,
  min_size, base_k, inc_k, sigma), not by the split or data set name: splits over the same images
  share it, and ``tools/proposals.py`` with the same settings and ``--cache-dir`` fills it.

* a user file (the ``.npz`` / ``.json`` format of ``detkit.proposals.cache.read_proposals_file``),
  one for every split or one per split; a ``file`` that is set wins over ``source``::

      proposals: {file: my_boxes.npz}
      proposals: {file: {train: train_boxes.npz, val: test_boxes.npz, test: test_boxes.npz}}

``max_proposals`` keeps the first ``P`` boxes of each image (both sources). Either way the result
is ``{image_id: (P, 4) float32}`` xyxy boxes in ORIGINAL-image pixels, what
``DetectionDataset(..., proposals=...)`` takes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detkit.data.record import DetectionData

__all__ = ["SELECTIVE_SEARCH_DEFAULTS", "check_proposals_spec", "load_configured_proposals", "prepare_proposals",
           "search_options"]

# R-CNN's settings (Girshick et al. 2014): fast mode on ~500-px images, boxes under 20 px removed;
# OpenCV's graph segmentation defaults (k = 150, 300, 450; sigma 0.8), docs/rcnn_sppnet.md.
SELECTIVE_SEARCH_DEFAULTS: dict[str, Any] = {
    "mode": "fast", "max_side": 500, "min_size": 20, "base_k": 150, "inc_k": 150, "sigma": 0.8,
    "max_proposals": None, "cache_dir": "outputs/proposals", "workers": 1, "progress": True,
}
_SEARCH_KEYS = ("mode", "max_side", "min_size", "base_k", "inc_k", "sigma")
_HOW = ("either compute selective search once into a cache: ++data.proposals='{source: selective_search, "
        "mode: fast, max_side: 500, cache_dir: outputs/proposals}', or use your own boxes: "
        "++data.proposals='{file: boxes.npz}' (format in detkit/proposals/cache.py; docs/training.md)")


def check_proposals_spec(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a ``data.proposals`` node; return it with the selective search defaults filled in.

    A ``file`` that is set wins over ``source`` (so ``data.proposals.file=boxes.npz`` on the
    command line switches a data config's default selective search node to your boxes).

    Raises:
        ValueError: no node, neither ``source`` nor ``file``, an unknown source or key.
    """
    if not spec:
        raise ValueError(f"data.proposals is not set; {_HOW}")
    if not isinstance(spec, Mapping):
        raise ValueError(f"data.proposals must be a mapping, got {spec!r}; {_HOW}")
    spec = dict(spec)
    unknown = set(spec) - set(SELECTIVE_SEARCH_DEFAULTS) - {"source", "file"}
    if unknown:
        raise ValueError(f"data.proposals: unknown keys {sorted(unknown)} "
                         f"(allowed: source, file, {', '.join(SELECTIVE_SEARCH_DEFAULTS)})")
    if spec.get("file") is not None:
        return {"file": spec["file"], "max_proposals": spec.get("max_proposals")}
    if spec.get("source") is None:
        raise ValueError(f"data.proposals has neither 'source' nor 'file'; {_HOW}")
    if spec["source"] != "selective_search":
        raise ValueError(f"data.proposals.source must be 'selective_search', got {spec['source']!r}; "
                         "other boxes can be given as a file: data.proposals.file=boxes.npz")
    from detkit.proposals.cache import search_settings

    spec = {**SELECTIVE_SEARCH_DEFAULTS, **spec}  # max_side: null searches at full size
    try:
        search_settings(**search_options(spec))
    except ValueError as e:
        raise ValueError(f"data.proposals: {e}") from None
    return spec


def search_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The selective search settings (the cache key) of a checked selective search node."""
    return {k: spec[k] for k in _SEARCH_KEYS}


def _file_for(spec: dict[str, Any], split: str) -> Path:
    f = spec["file"]
    if isinstance(f, Mapping):
        if split not in f:
            raise ValueError(f"data.proposals.file names no file for split {split!r} (has {sorted(f)})")
        f = f[split]
    return Path(os.fspath(f)).expanduser()


def prepare_proposals(spec: Mapping[str, Any], data: DetectionData, *, progress: bool | None = None) -> None:
    """Compute the selective search cache of ``data`` where it is missing (a file source: nothing).

    Call on one process only (the main rank); the others wait, then call
    ``load_configured_proposals``. ``progress`` overrides the node's ``progress``.
    """
    from detkit.proposals.cache import compute_proposals

    spec = check_proposals_spec(spec)
    if spec.get("file") is not None:
        return
    compute_proposals(data, spec["cache_dir"], workers=int(spec["workers"]),
                      progress=spec["progress"] if progress is None else progress, **search_options(spec))


def load_configured_proposals(spec: Mapping[str, Any], data: DetectionData, *, split: str) -> dict[int, np.ndarray]:
    """``{image_id: (P, 4) float32}`` original-image boxes of every image of ``data`` (split ``split``).

    Raises:
        ProposalsError: the cache or file is missing, incomplete or malformed (names the path).
        ValueError: a malformed ``spec`` (``check_proposals_spec``).
    """
    from detkit.proposals.cache import load_proposals, read_proposals_file

    spec = check_proposals_spec(spec)
    cap = spec.get("max_proposals")
    if spec.get("file") is not None:
        boxes = read_proposals_file(_file_for(spec, split), data)
        return {k: v[:cap] for k, v in boxes.items()} if cap else boxes
    return load_proposals(spec["cache_dir"], data, max_proposals=cap, **search_options(spec))
