"""Stride and receptive field (RF) tracking through a forward pass, per spatial axis, in input pixels.

Written by hand: no library in detkit's dependencies computes receptive fields. Used by
:func:`detkit.analysis.architecture.summary.summarize`, which seeds the input tensor with :func:`pixel_grid`
and runs the model under :class:`Tracker` with module hooks calling :func:`window_rule`,
:func:`window` and :func:`propagate`.

Each tensor carries its state in an attribute (:func:`state_of` / :func:`set_state`): an
:class:`RF`, or :data:`UNKNOWN`. Every convolution or pooling — module (``nn.Conv*``,
``nn.*Pool*``) or functional (``F.conv2d``, ``F.max_pool2d``, ``F.adaptive_avg_pool2d``, ...) —
applies the jump/RF recurrence (kernel ``k``, stride ``s``, dilation ``d``, padding ``p``;
adaptive pooling: ``k`` = its largest window, ``s`` = in/out size)::

    j_out = j_in·s      r_out = r_in + (k−1)·d·j_in      c_out = c_in + ((k−1)/2·d − p)·j_in

(``c`` is the centre of the first output unit's RF, ``rf_start``; ``F.pad`` shifts ``c`` by the
left padding). Every other operation (activations, norms, ``torch.cat``, ``+``, slicing channels)
passes the values through; where tensors meet — inception's concatenation, the residual addition —
the output takes the **maximum over the branches** (stride and RF separately): the largest region
any branch sees. A tensor that loses its spatial axes (flatten, global pooling, fc layers) covers
``r + (n−1)·j`` pixels and has no stride (``jump is None``). A spatial op without a rule
(interpolation, cropping) makes the values unknown from there on. RFs are theoretical: not
clipped at the image border.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "RF", "UNKNOWN", "Tracker", "functional_state", "merge", "per_axis", "pixel_grid", "propagate",
    "set_state", "state_of", "window", "window_rule",
]

_ATTR = "_detkit_rf"  # set on tensors during the pass: an RF, or UNKNOWN

UNKNOWN = "unknown"  # a spatial op without a rule happened upstream


@dataclass(frozen=True)
class RF:
    """Per spatial axis: ``jump`` (stride in input pixels; None: no spatial grid any more —
    flattened / global), ``rf`` (receptive-field size) and ``start`` (centre of the first unit's RF)."""

    jump: tuple[float, ...] | None
    rf: tuple[float, ...]
    start: tuple[float, ...]


def pixel_grid(n: int) -> RF:
    """State of the input image with ``n`` spatial axes: pixel i covers [i, i+1), centre i+0.5."""
    return RF((1.0,) * n, (1.0,) * n, (0.5,) * n)


def state_of(t: Tensor) -> RF | str | None:
    """The tensor's state (None: not derived from the tracked input)."""
    return getattr(t, _ATTR, None)


def set_state(t: Tensor, state: RF | str | None) -> None:
    setattr(t, _ATTR, state)


def per_axis(v, n: int) -> tuple:
    """``v`` as an ``n``-tuple (an int hyper-parameter applies to every axis)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def merge(states: list) -> RF | str:
    """Where branches meet: the maximum over them (see module docstring)."""
    if any(s is UNKNOWN for s in states):
        return UNKNOWN
    n = len(states[0].rf)
    if any(len(s.rf) != n for s in states):
        return UNKNOWN
    grids = [s for s in states if s.jump is not None]
    widest = max(states, key=lambda s: sum(s.rf))
    jump = tuple(max(s.jump[i] for s in grids) for i in range(n)) if grids else None
    rf = tuple(max(s.rf[i] for s in states) for i in range(n))
    return RF(jump, rf, widest.start)


def propagate(inputs: list[Tensor], outputs: list[Tensor]) -> None:
    """Pass stride/RF through an op without a rule of its own (see module docstring)."""
    tracked = [t for t in inputs if state_of(t) is not None]
    if not tracked:
        return
    merged = merge([state_of(t) for t in tracked])
    src = max(tracked, key=lambda t: t.dim())
    for out in outputs:
        if merged is UNKNOWN or merged.jump is None:
            state = merged
        elif out.dim() == src.dim() and out.shape[2:] == src.shape[2:]:
            state = merged
        elif out.dim() <= 2 or (out.dim() == src.dim() and all(n == 1 for n in out.shape[2:])):
            # spatial axes gone: the unit sees the whole input map
            sizes = src.shape[2:]
            rf = tuple(r + (n - 1) * j for r, n, j in zip(merged.rf, sizes, merged.jump, strict=True))
            start = tuple(c + (n - 1) / 2 * j for c, n, j in zip(merged.start, sizes, merged.jump, strict=True))
            state = RF(None, rf, start)
        else:
            state = UNKNOWN
        set_state(out, state)


def window(state, k, s, d, p) -> RF | str:
    """The recurrence for one window op with per-axis kernel, stride, dilation, padding."""
    if state is UNKNOWN or state.jump is None:
        return state  # unknown stays unknown; a window over a global vector sees no more
    j, r, c = state.jump, state.rf, state.start
    return RF(
        tuple(ji * si for ji, si in zip(j, s, strict=True)),
        tuple(ri + (ki - 1) * di * ji for ri, ki, di, ji in zip(r, k, d, j, strict=True)),
        tuple(ci + ((ki - 1) / 2 * di - pi) * ji for ci, ki, di, pi, ji in zip(c, k, d, p, j, strict=True)),
    )


def _adaptive(x: Tensor, y: Tensor) -> tuple[tuple, tuple]:
    """(k, s) of adaptive pooling from ``x`` to ``y``: k = its largest window, s = in/out size."""
    ins, outs = x.shape[2:], y.shape[2:]
    k = tuple(max(math.ceil((o + 1) * a / b) - (o * a) // b for o in range(b)) for a, b in zip(ins, outs))
    return k, tuple(a / b for a, b in zip(ins, outs))


def window_rule(m: nn.Module, x: Tensor, y: Tensor):
    """(k, s, d, p) per axis for a convolution or pooling module, or None when it has no rule."""
    n = x.dim() - 2
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        k, d = per_axis(m.kernel_size, n), per_axis(m.dilation, n)
        if m.padding == "valid":
            p = (0,) * n
        elif m.padding == "same":
            p = tuple(di * (ki - 1) / 2 for ki, di in zip(k, d))
        else:
            p = per_axis(m.padding, n)
        return k, per_axis(m.stride, n), d, p
    if isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd)):
        k = per_axis(m.kernel_size, n)
        s = per_axis(m.stride if m.stride else m.kernel_size, n)
        return k, s, per_axis(getattr(m, "dilation", 1), n), per_axis(getattr(m, "padding", 0), n)
    if isinstance(m, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        k, s = _adaptive(x, y)
        return k, s, (1,) * n, (0,) * n
    return None


# positional parameters of the functional forms (builtins cannot be introspected)
_SIGNATURES = {
    "conv": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool": ("input", "kernel_size", "stride", "padding", "dilation"),
    "avg_pool": ("input", "kernel_size", "stride", "padding"),
    "adaptive": ("input", "output_size"),
    "pad": ("input", "pad"),
}
_FUNC_KIND = re.compile(r"^(conv|max_pool|avg_pool|adaptive)_?\w*?[123]d(_with_indices)?$|^(pad)$")


def functional_state(func, args, kwargs, y: Tensor):
    """Stride/RF after a functional conv, pooling or pad (F.max_pool2d inside a custom module);
    None when ``func`` is none of those or its input is untracked."""
    match = _FUNC_KIND.match(getattr(func, "__name__", ""))
    if not match or not args or not isinstance(args[0], Tensor) or state_of(args[0]) is None:
        return None
    kind = match.group(1) or match.group(3)
    a = {**dict(zip(_SIGNATURES[kind], args)), **kwargs}
    x, state = a["input"], state_of(args[0])
    n = x.dim() - 2
    if kind == "pad":
        pad = tuple(a["pad"])
        if len(pad) > 2 * n or x.dim() != y.dim() or state is UNKNOWN or state.jump is None:
            return None
        left = tuple(pad[2 * (n - 1 - i)] if 2 * (n - 1 - i) < len(pad) else 0 for i in range(n))
        return RF(state.jump, state.rf, tuple(c - lf * j for c, lf, j in zip(state.start, left, state.jump)))
    if kind == "adaptive":
        k, s = _adaptive(x, y)
        return window(state, k, s, (1,) * n, (0,) * n)
    k = tuple(a["weight"].shape[2:]) if kind == "conv" else per_axis(a["kernel_size"], n)
    s = a.get("stride") or (1 if kind == "conv" else k)
    d = per_axis(a.get("dilation", 1), n)
    p = a.get("padding", 0)
    if p == "valid":
        p = 0
    elif p == "same":
        p = tuple(di * (ki - 1) / 2 for ki, di in zip(k, d))
    return window(state, k, per_axis(s, n), d, per_axis(p, n))


class Tracker(TorchFunctionMode):
    """Propagates stride/RF through every torch op: functional conv/pool/pad by their rule,
    everything else (cat, add, flatten, ...) by the branch maximum."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        if outs:
            state = functional_state(func, args, kwargs, outs[0])
            if state is not None:
                for o in outs:
                    set_state(o, state)
            else:
                propagate([t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)], outs)
        return out
