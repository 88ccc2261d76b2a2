"""Build an untrained detector in code, from the same configs ``tools/train.py`` uses.

    import detkit
    model = detkit.build("faster_rcnn", "vgg16", num_classes=3, **{"backbone.width": 0.5})
    model.eval()(batch)     # a detkit.data.batch.ImageBatch -> one {"boxes", "scores", "labels"} per image

As torchvision's builders (``fasterrcnn_resnet50_fpn(num_classes=...)``), for any of the five methods
and five backbones; overrides are the dotted keys of configs/train.yaml, as on the command line.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["build", "to_override"]


def to_override(key: str, value: Any) -> str:
    """``("backbone.width", 0.5)`` -> ``"backbone.width=0.5"`` (Hydra's override syntax)."""
    def text(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(text(x) for x in v) + "]"
        if isinstance(v, Mapping):
            return "{" + ",".join(f"{k}:{text(x)}" for k, x in v.items()) + "}"
        if isinstance(v, str):
            return json.dumps(v) if any(c in v for c in " ,[]{}:='\"") else v
        return repr(v)
    return f"{key}={text(value)}"


def build(method: str = "faster_rcnn", backbone: str = "vgg16", num_classes: int = 20, *, preset: str = "paper",
          **overrides: Any) -> nn.Module:
    """An untrained detector: ``configs/method/<method>.yaml`` on ``configs/backbone/<backbone>.yaml``.

    Args:
        method: ``rcnn``, ``sppnet``, ``overfeat``, ``fast_rcnn`` or ``faster_rcnn``.
        backbone: ``alexnet``, ``zfnet``, ``vgg16``, ``googlenet``, ``resnet101`` (and the
            torchvision-layout ``alexnet_tv``, ``googlenet_tv``, ``resnet50``).
        num_classes: ``K`` object classes (background excluded).
        preset: ``paper`` (the papers' settings) or ``cpu`` (configs/preset/).
        overrides: dotted config keys, e.g. ``**{"backbone.width": 0.5, "method.model.roi_pool_mode": "align"}``.

    Raises:
        detkit.engine.config.ConfigError: an unknown method, backbone, preset or key.
    """
    from detkit.engine.checkpoint import build_model
    from detkit.engine.config import ConfigError, compose_run_config

    if num_classes < 1:
        raise ValueError(f"build: num_classes must be >= 1, got {num_classes}")
    conf = compose_run_config([f"method={method}", f"backbone={backbone}", f"preset={preset}",
                               *(to_override(k, v) for k, v in overrides.items())])
    if (conf["method"].get("model") or {}).get("anchor_sizes") == "auto":
        raise ConfigError("build: method.model.anchor_sizes=auto is fitted to a training set when a run starts; "
                          "give the sizes, e.g. **{'method.model.anchor_sizes': [32, 64, 128, 256]}")
    return build_model(conf, num_classes)
