"""Checkpoints: atomic writes, ``weights_only`` loading, RNG capture, and rebuilding a model.

A detkit checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(..., weights_only=True)`` (no arbitrary pickled code runs when a file is opened)::

    format      "detkit-checkpoint"        version  1
    model       model state dict           optimizer / scheduler / scaler   state dicts (or None)
    rng         {"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]}
    iteration   optimiser steps done       epoch / position   sampler epoch and batches consumed in it
    config      the resolved run config (plain dict)    class_names, category_ids   of the data
    metrics     last evaluation results (plain dict, may be empty)

Writes are atomic (temp file in the same folder, ``fsync``, ``os.replace``): a crash mid-write
leaves the previous ``last.pt`` intact, never a half-written file in its place.

A stored config names code: Hydra's ``instantiate`` imports and calls every ``_target_`` in it.
Checkpoints are what people download and share, so before a model is rebuilt from one
(:func:`model_from_checkpoint`) its config is checked, and nothing in it is imported first: every
``_target_`` must be one of detkit's own builders (:data:`CHECKPOINT_BUILDERS`), no other Hydra
key (``_args_``, ``_partial_``, ...) may appear, and no string may hold an interpolation
(``${...}``: resolvers are code too). Configs a user composes (command line, own YAML) keep Hydra's
full power; only what is read from a file is held to the list.
"""
from __future__ import annotations

import copy
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.utils.atomic import atomic_write

FORMAT = "detkit-checkpoint"
VERSION = 1
LAST = "last.pt"


# Every builder configs/ names: what a checkpoint's config may ask to be imported and called.
# (tests/engine/test_checkpoint_trust.py checks that this list and configs/ agree.)
CHECKPOINT_BUILDERS = frozenset({
    *(f"detkit.backbones.{m}.{f}" for m, fs in {
        "alexnet": ("alexnet", "alexnet_backbone", "alexnet_tv", "alexnet_tv_backbone"),
        "zfnet": ("zfnet", "zfnet_backbone"),
        "vgg": ("vgg16", "vgg16_backbone"),
        "googlenet": ("googlenet", "googlenet_backbone", "googlenet_tv", "googlenet_tv_backbone"),
        "resnet": ("resnet50", "resnet50_backbone", "resnet101", "resnet101_backbone"),
    }.items() for f in fs),
    "detkit.methods.rcnn.RCNN", "detkit.methods.sppnet.SPPNet", "detkit.methods.overfeat.overfeat",
    "detkit.methods.fast_rcnn.fast_rcnn", "detkit.methods.faster_rcnn.faster_rcnn",
})


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, not a detkit checkpoint, does not fit, or
    its stored config names code that is not one of detkit's builders."""


def check_stored_config(config: Any, *, source: str = "checkpoint") -> None:
    """Refuse a config read from a file unless it can only call detkit's builders (module docstring).

    Nothing is imported: the check reads the plain containers only.

    Raises:
        CheckpointError: naming the key and what it holds.
    """
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if key == "_target_":
                    if not isinstance(value, str) or value not in CHECKPOINT_BUILDERS:
                        raise CheckpointError(
                            f"{source}: refusing to build the model: its config key {where!r} names {value!r}, "
                            "which is not one of detkit's builders (a checkpoint may only name those; "
                            "nothing was imported or run)")
                elif isinstance(key, str) and key.startswith("_") and key.endswith("_"):
                    raise CheckpointError(f"{source}: refusing to build the model: its config has the Hydra key "
                                          f"{where!r}, which a detkit checkpoint never holds")
                walk(value, where)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise CheckpointError(f"{source}: refusing to build the model: its config value {path!r} holds an "
                                  f"interpolation ({node!r}); stored configs are resolved, so this one was edited")

    walk(config, "")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (:func:`detkit.utils.atomic.atomic_write`): temp file in
    the same folder, fsync, ``os.replace``; any failure (``KeyboardInterrupt`` included) leaves the
    old file untouched and no temp file behind. Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a detkit checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or not a detkit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage bytes reach the unpickler as any error (KeyError, ...)
        msg = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint (corrupt or truncated file?): {msg}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a detkit checkpoint (missing format marker {FORMAT!r})")
    if int(ckpt.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is newer than this detkit ({VERSION})")
    for key in ("model", "iteration"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return ckpt


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """All global RNG states as tensors/lists (``weights_only``-loadable)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- save / load
class CheckpointManager:
    """Writes ``run_dir/last.pt`` (and, with ``keep_every``, ``model_<iteration>.pt`` copies).

    Args:
        run_dir: folder of the run.
        keep_every: also keep a permanent copy every this many iterations (0: only ``last.pt``).
    """

    def __init__(self, run_dir: str | os.PathLike, *, keep_every: int = 0):
        self.run_dir = Path(run_dir)
        self.keep_every = int(keep_every)

    @property
    def last(self) -> Path:
        return self.run_dir / LAST

    def save(self, state: dict[str, Any]) -> Path:
        """Atomically write ``state`` (built by ``make_state``) to ``last.pt`` (+ periodic copy)."""
        path = atomic_torch_save(state, self.last)
        it = int(state["iteration"])
        if self.keep_every > 0 and it % self.keep_every == 0:
            atomic_torch_save(state, self.run_dir / f"model_{it:07d}.pt")
        return path

    def exists(self) -> bool:
        return self.last.is_file()


def make_state(
    *,
    model: nn.Module,
    iteration: int,
    epoch: int = 0,
    position: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    config: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict (module docstring). ``model`` may be DDP-wrapped."""
    model = getattr(model, "module", model)
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "iteration": int(iteration),
        "epoch": int(epoch),
        "position": int(position),
        "config": config or {},
        "class_names": list(class_names or []),
        "category_ids": [int(c) for c in (category_ids or [])],
        "metrics": metrics or {},
    }


def load_model_weights(model: nn.Module, state_dict: dict[str, Any], *, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a clear error listing what does not fit."""
    model = getattr(model, "module", model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong:
        def show(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if wrong:
            parts.append(f"shape mismatch: {show(wrong)}")
        if missing:
            parts.append(f"missing in checkpoint: {show(missing)}")
        if unexpected:
            parts.append(f"not in model: {show(unexpected)}")
        raise CheckpointError(f"{source}: weights do not fit the model built from its config; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def init_weights_from(model: nn.Module, path: str | os.PathLike, class_names: Sequence[str]) -> dict[str, list[str]]:
    """Start ``model`` from another run's checkpoint (``init_from``), as far as it fits.

    Every parameter and buffer whose key and shape the checkpoint has is loaded; when the
    checkpoint's class names differ from ``class_names``, the method's class-specific layers
    (``model.class_specific()``: the predictor, R-CNN's SVMs and box regressors, ...) keep their fresh
    initialisation. Only weights are read (``weights_only``); the checkpoint's config is not used.

    Returns:
        ``{"loaded", "reinitialised", "not_in_checkpoint", "shape_differs"}`` lists of keys.

    Raises:
        CheckpointError: the file cannot be read, or nothing in it fits the model.
    """
    ckpt = load_checkpoint(path)
    same_classes = list(ckpt.get("class_names") or []) == list(class_names)
    fresh = [] if same_classes else list(getattr(model, "class_specific", lambda: [])())
    own, theirs = model.state_dict(), ckpt["model"]
    report: dict[str, list[str]] = {"loaded": [], "reinitialised": [], "not_in_checkpoint": [], "shape_differs": []}
    state = {}
    for key, value in own.items():
        if any(key == p or key.startswith(p) for p in fresh):
            report["reinitialised"].append(key)
        elif key not in theirs:
            report["not_in_checkpoint"].append(key)
        elif tuple(theirs[key].shape) != tuple(value.shape):
            report["shape_differs"].append(key)
        else:
            state[key] = theirs[key]
            report["loaded"].append(key)
    if not state:
        raise CheckpointError(f"{path}: init_from: no weight of this checkpoint fits the model (another backbone?)")
    model.load_state_dict(state, strict=False)
    return report


def build_model(config: dict[str, Any], num_classes: int) -> nn.Module:
    """Build the detector a run config describes: ``method.model`` with ``backbone`` and ``num_classes``.

    The config layout (configs/train.yaml) keeps the detector's keyword arguments under
    ``method.model`` (with ``_target_``) and the backbone's under ``backbone``; the class count
    comes from the data, so the same method config serves every data set.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = config if isinstance(config, dict) else OmegaConf.to_container(config, resolve=True)
    for key in ("method", "backbone"):
        if not isinstance(cfg.get(key), dict):
            raise CheckpointError(f"config has no {key!r} section; cannot build the model")
    model_cfg = cfg["method"].get("model")
    if not isinstance(model_cfg, dict) or "_target_" not in model_cfg:
        raise CheckpointError("config.method has no 'model' with a '_target_' (see configs/method/*.yaml)")
    # The backbone node also describes the whole classification network under `classifier`
    # (configs/backbone/*.yaml); detection uses the node without it.
    backbone_cfg = {k: v for k, v in cfg["backbone"].items() if k != "classifier"}
    try:
        backbone = instantiate(backbone_cfg)
        extra = {}
        if cfg["method"].get("uses_classifier"):
            # Methods built on the whole classification network (OverFeat) also get it.
            if not isinstance(cfg["backbone"].get("classifier"), dict):
                raise CheckpointError(f"method {cfg['method'].get('name')!r} needs the backbone config's "
                                      "'classifier' node (configs/backbone/*.yaml), which is missing")
            extra["classifier"] = instantiate(cfg["backbone"]["classifier"])
        return instantiate(model_cfg, backbone=backbone, num_classes=int(num_classes), **extra)
    except InstantiationException as e:
        msg = str(e).split(", set env var HYDRA_FULL_ERROR")[0]
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ is not None else ""
        raise CheckpointError(f"cannot build the model from the config: {msg}{cause}") from e


def apply_overrides(config: dict[str, Any], overrides: Sequence[str], *, source: str = "checkpoint") -> dict[str, Any]:
    """A copy of a stored run config with ``KEY=VALUE`` dotted overrides applied (values parsed
    as YAML, as on Hydra's command line), e.g. ``method.model.merge=nms``.

    Every section on the key's path must exist in the stored config; the last part may be new
    (a keyword added to the builder after the run), and a misspelt keyword is then refused by the
    builder itself. Raises ``CheckpointError`` naming the override.
    """
    import yaml

    cfg = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise CheckpointError(f"override {item!r}: expected KEY=VALUE, e.g. method.model.merge=nms")
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise CheckpointError(f"{source}: override {item!r}: the stored config has no section "
                                      f"{'.'.join(parts[:i + 1])!r}")
            node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise CheckpointError(f"override {item!r}: cannot parse the value: {e}") from None
    return cfg


def _without_initial_weights(config: dict[str, Any]) -> dict[str, Any]:
    """The config with ``backbone.weights`` (and its classifier's) set to ``None``: the checkpoint's
    weights replace them anyway, and the file the run started from need not exist here."""
    cfg = copy.deepcopy(config)
    for node in (cfg.get("backbone"), (cfg.get("backbone") or {}).get("classifier")):
        if isinstance(node, dict) and node.get("weights") is not None:
            node["weights"] = None
    return cfg


def model_from_checkpoint(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the detector from the config stored in a checkpoint and load its weights.

    ``overrides`` (``KEY=VALUE``, :func:`apply_overrides`) change the stored config before the
    model is built: test-time settings such as ``method.model.merge=nms`` or
    ``method.model.box_score_thresh=0.3`` (the weights must still fit). The returned checkpoint's
    ``config`` is the overridden one.

    Returns ``(model in eval mode on the CPU, checkpoint dict)``.
    """
    ckpt = load_checkpoint(path)
    names = ckpt.get("class_names") or []
    if not names:
        raise CheckpointError(f"{path}: checkpoint stores no class names")
    if not ckpt.get("config"):
        raise CheckpointError(f"{path}: checkpoint stores no config; cannot rebuild the model")
    check_stored_config(ckpt["config"], source=str(path))
    if overrides:
        ckpt["config"] = apply_overrides(ckpt["config"], overrides, source=str(path))
        check_stored_config(ckpt["config"], source=f"{path} with overrides {list(overrides)}")
    try:
        model = build_model(_without_initial_weights(ckpt["config"]), len(names))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    load_model_weights(model, ckpt["model"], source=str(path))
    return model.eval(), ckpt
