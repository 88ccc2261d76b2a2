"""The options every detkit backbone honours: normalisation, width multiplier, frozen stages.

* ``norm`` — what follows each convolution (before its ReLU):
  ``"none"`` (the paper: nothing, convolutions keep their biases), ``"bn"`` (batch norm,
  ``nn.BatchNorm2d``), ``"gn"`` (group norm, 32 groups or fewer when the channels are few),
  ``"frozen_bn"`` (batch norm with fixed statistics and affine parameters,
  :class:`torchvision.ops.FrozenBatchNorm2d` — the usual choice when fine-tuning a detector
  with small batches). Fully connected layers never get a norm.
* ``width`` — multiplies every convolution and fully connected channel count (tiny CPU
  variants); see :func:`scale_width` for the rounding.
* ``frozen_stages`` — the first ``n`` stages (defined in each network's docstring) get
  ``requires_grad=False``; their batch norms become :class:`FrozenBatchNorm2d` so nothing in a
  frozen stage changes during training, not even running statistics.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detkit.backbones.base import freeze

__all__ = ["NORMS", "FrozenBatchNorm2d", "check_norm", "make_norm", "gn_groups", "scale_width",
           "freeze_norms", "freeze_stages"]

NORMS = ("none", "bn", "gn", "frozen_bn")


def check_norm(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`NORMS`, else raise ``ValueError``."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")
    return kind


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count ``<= max_groups`` dividing ``channels`` (32 for the usual widths)."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    raise ValueError(f"channels must be positive, got {channels}")


def make_norm(kind: str, channels: int, *, eps: float = 1e-5) -> nn.Module:
    """The normalisation layer for ``channels`` feature maps, ``(N, C, H, W) -> (N, C, H, W)``.

    ``"none"`` returns ``nn.Identity()`` (no parameters, no state-dict keys).
    """
    check_norm(kind)
    if kind == "none":
        return nn.Identity()
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=eps)
    if kind == "gn":
        return nn.GroupNorm(gn_groups(channels), channels, eps=eps)
    return FrozenBatchNorm2d(channels, eps=eps)


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest multiple of 8, and at least 8.

    ``width == 1`` returns ``channels`` unchanged (so 96, 192, 1000... stay exact).
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if width == 1.0:
        return int(channels)
    return max(8, int(channels * width / 8.0 + 0.5) * 8)  # half up, not banker's rounding


def _to_frozen(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    if bn.affine:
        frozen.weight.copy_(bn.weight.detach())
        frozen.bias.copy_(bn.bias.detach())
    if bn.track_running_stats:
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return frozen


def freeze_norms(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` by an equivalent ``FrozenBatchNorm2d``.

    ``module`` itself must not be a batch norm (replace it through its parent instead).
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _to_frozen(child))
        else:
            freeze_norms(child)
    return module


def freeze_stages(model: nn.Module, stages: Sequence[Sequence[str]], n: int) -> nn.Module:
    """Freeze the first ``n`` of ``stages`` (each a list of submodule names of ``model``).

    Parameters of those submodules get ``requires_grad=False`` and their batch norms become
    ``FrozenBatchNorm2d``.
    """
    if not 0 <= n <= len(stages):
        raise ValueError(f"frozen_stages must be in 0..{len(stages)}, got {n}")
    for names in stages[:n]:
        for name in names:
            sub = model.get_submodule(name)
            if isinstance(sub, nn.BatchNorm2d):
                parent_name, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent_name), attr, _to_frozen(sub))
            else:
                freeze_norms(sub)
                freeze(sub)
    return model
