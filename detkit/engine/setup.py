"""The set-up every training recipe shares: data splits, generated data, proposals, anchors, kernels.

Joint training (``detkit.engine.run``), R-CNN/SPPNet stages (``detkit.engine.stages``) and 4-step
alternating training (``detkit.engine.alternating``) all read their data and prepare their run
with these functions, so a config means the same thing to each recipe.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.engine import distributed as ddp

log = logging.getLogger("detkit.train")


def resolve_root(root: str | Path) -> Path:
    """A data root as given; a relative path is tried against the cwd, then the repository."""
    p = Path(root).expanduser()
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2]
    return repo / p if (repo / p).exists() else p


def load_split(data_cfg: dict, split: str, class_names: Sequence[str] | None = None):
    """The ``DetectionData`` of ``data_cfg[split]`` (``{roots, splits, ...}`` VOC,
    ``{annotation_file, image_root, ...}`` COCO or ``{root, split, ...}`` YOLO; extra keys go to
    the loader), or ``None``."""
    spec = data_cfg.get(split)
    if not spec:
        return None
    spec = dict(spec)
    name = f"{data_cfg.get('name', 'data')}/{split}"
    names = class_names or data_cfg.get("class_names") or None
    fmt = data_cfg.get("format", "voc")
    if fmt == "voc":
        from detkit.data.voc import load_voc
        roots = [resolve_root(r) for r in spec.pop("roots")]
        return load_voc(roots, spec.pop("splits", split), names, name=name, **spec)
    if fmt == "coco":
        from detkit.data.coco import load_coco
        return load_coco(resolve_root(spec.pop("annotation_file")), resolve_root(spec.pop("image_root")),
                         class_names=names, name=name, **spec)
    if fmt == "yolo":
        from detkit.data.yolo import load_yolo
        return load_yolo(resolve_root(spec.pop("root")), spec.pop("split", split), names, name=name, **spec)
    raise ValueError(f"data.format must be 'voc', 'coco' or 'yolo', got {fmt!r}")


def prepare_data(data_cfg: dict) -> None:
    """Generate a data set that builds itself (``data.generate``) when its root is absent."""
    gen = data_cfg.get("generate")
    if not gen:
        return
    root = Path(data_cfg["root"])
    if ddp.is_main() and not (root / "Annotations").is_dir():
        from detkit.data.synthetic import make_synthetic_voc
        log.info("generating the %s data set into %s", data_cfg.get("name"), root)
        make_synthetic_voc(root, **dict(gen))
    ddp.barrier()


def split_proposals(conf: dict, data, split: str) -> dict[str, Any]:
    """``{"proposals": {image_id: (P, 4)}}`` (``DetectionDataset`` keywords) of split ``split`` when
    ``conf["method"]`` trains on precomputed proposals (``requires_proposals``), from the
    ``data.proposals`` node (detkit/proposals/source.py; selective search is computed into its cache
    on the main rank when missing); ``{}`` for the other methods or a split without data."""
    if data is None or not conf["method"].get("requires_proposals"):
        return {}
    from detkit.proposals.source import load_configured_proposals, prepare_proposals

    spec = conf["data"].get("proposals")
    if ddp.is_main():
        prepare_proposals(spec, data, progress=None if conf.get("progress", True) else False)
    ddp.barrier()
    return {"proposals": load_configured_proposals(spec, data, split=split)}


def fit_auto_anchors(conf: dict, train_data) -> None:
    """``method.model.anchor_sizes: auto`` -> sizes fitted to ``train_data``'s boxes at the training
    scale (``detkit.proposals.anchor_fit``), written into ``conf`` (so checkpoints store them) and
    logged. Other values are left alone."""
    model = conf["method"].get("model") or {}
    if model.get("anchor_sizes") != "auto":
        return
    from detkit.proposals.anchor_fit import box_sides, fit_anchor_sizes

    tf = conf["data"].get("transforms") or {}
    sides = box_sides(train_data, min_size=tf.get("min_size", 600), max_size=tf.get("max_size", 1000))
    model["anchor_sizes"] = fit_anchor_sizes(sides)
    if len(sides):
        log.info("anchor sizes fitted to the %d training boxes (sqrt(w*h) at the training scale: 2nd-98th "
                 "percentile %.0f-%.0f px): %s", len(sides), np.percentile(sides, 2), np.percentile(sides, 98),
                 model["anchor_sizes"])


def set_algorithms(conf: dict) -> None:
    """``deterministic`` (deterministic kernels, no autotuning) or ``cudnn_benchmark``."""
    if conf.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # autotuning pays for fixed input sizes, costs a search per new shape when sizes vary
        torch.backends.cudnn.benchmark = bool(conf.get("cudnn_benchmark", True))


def apply_init_from(model: torch.nn.Module, conf: dict, class_names: Sequence[str]) -> None:
    """``init_from=CHECKPOINT``: start ``model`` from another run's weights where they fit, the
    class-specific layers afresh when the classes differ (``detkit.engine.checkpoint.init_weights_from``);
    logs what was loaded and what was not. Distinct from ``resume`` (which continues one run exactly)."""
    path = conf.get("init_from")
    if not path:
        return
    from detkit.engine.checkpoint import init_weights_from

    from detkit.engine.run_guard import show_keys as show

    report = init_weights_from(model, resolve_root(path), class_names)
    log.info("init_from %s: loaded %d tensors; re-initialised (other classes): %s; not in the checkpoint: %s; "
             "shape differs: %s", path, len(report["loaded"]), show(report["reinitialised"]),
             show(report["not_in_checkpoint"]), show(report["shape_differs"]))
