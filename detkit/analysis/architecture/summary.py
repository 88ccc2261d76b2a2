"""Per-layer summary of a network: output shape, parameters, multiply-adds, stride, receptive field.

Written by hand: no summary library is in detkit's dependencies (torchinfo and fvcore are not
installed), and none of them reports receptive fields. This module holds the result types and the
hook-driven pass; the stride/RF rules are in :mod:`detkit.analysis.architecture.receptive_field`, the text
output (:func:`format_table`, :func:`to_markdown`, re-exported here) in :mod:`detkit.analysis.architecture.table`.

How each number is obtained (one forward pass of a ``(1, C, H, W)`` zero image, hooks on modules):

* **Output shape** — the first tensor a module returns, without the batch axis (``C×H×W``). The
  pass runs on the ``meta`` device by default (shapes only: no arithmetic, no memory), so VGG-16
  at 600×1000 is instant; models whose ops have no meta kernel are re-run on their own device.
* **Parameters** — every parameter tensor once, in the row of the module that owns it (a module
  called twice has its parameters on its first row), so the total equals
  ``sum(p.numel() for p in model.parameters())``; *trainable* counts ``requires_grad`` ones.
  Modules that own parameters but are not called (GoogLeNet's auxiliary classifiers in eval mode)
  get a row marked "not called".
* **Multiply-adds (MACs)**, per image, from the hooks of:
  ``Conv``: ``C_out·H_out·W_out · C_in/groups · k_h·k_w``; ``ConvTranspose``:
  ``C_in·H_in·W_in · C_out/groups · k_h·k_w``; ``Linear``: ``in·out`` per output row.
  Counted as zero: bias additions, normalisation (BN, GN, LRN), activations, pooling, dropout,
  residual additions, softmax — the convention of the GoogLeNet paper's "ops" column, so the
  numbers compare with the papers. Convolutions called as functions outside an ``nn.Conv``
  module are not seen.
* **Stride and receptive field (RF)**, per spatial axis, in input pixels, by the jump/RF
  recurrence of each convolution or pooling (module or functional), the maximum over branches
  where tensors meet (inception's concatenation, the residual addition); "—" where the spatial
  axes are gone, "?" after a spatial op without a rule. Rules: :mod:`detkit.analysis.architecture.receptive_field`.

A :class:`~detkit.backbones.base.Backbone` is summarised in two parts: the trunk at the image size
and the region head at ``(1, out_channels, roi_size, roi_size)``; the head's stride and RF are in
RoI-bin units (RoI pooling has no fixed relation to input pixels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten

from detkit.analysis.architecture.receptive_field import (
    RF,
    Tracker,
    per_axis,
    pixel_grid,
    propagate,
    set_state,
    state_of,
    window,
    window_rule,
)
from detkit.analysis.architecture.table import format_table, to_markdown

__all__ = ["LayerRow", "Summary", "SummaryError", "format_table", "summarize", "to_markdown"]


class SummaryError(ValueError):
    """Bad input size, or the model's forward pass failed (names the module where)."""


@dataclass(frozen=True)
class LayerRow:
    """One table row: a module call (or, with ``depth``, a module and everything it calls).

    ``output_shape`` has no batch axis (``None``: not called); ``stride``/``rf``/``rf_start`` are per
    spatial axis in input pixels; ``stride is None`` with an ``rf`` means no spatial grid, and
    ``rf is None`` means unknown.
    """

    name: str
    type: str
    depth: int
    output_shape: tuple[int, ...] | None
    params: int
    trainable: int
    macs: int
    stride: tuple[float, ...] | None
    rf: tuple[float, ...] | None
    rf_start: tuple[float, ...] | None = None
    called: bool = True


@dataclass(frozen=True)
class Summary:
    """Rows in call order plus the whole pass; ``parts`` holds trunk/region-head for a Backbone."""

    name: str
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    output_shape: tuple[int, ...] | None
    output_stride: tuple[float, ...] | None
    output_rf: tuple[float, ...] | None
    parts: tuple[Summary, ...] = field(default=())

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    def row(self, name: str) -> LayerRow:
        """The first row called ``name`` (KeyError lists the names)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r} in summary of {self.name}; rows: {[r.name for r in self.rows]}")

    def part(self, name: str) -> Summary:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"no part {name!r} in summary of {self.name}; parts: {[p.name for p in self.parts]}")


# --------------------------------------------------------------------------- multiply-adds
def _macs(m: nn.Module, x: Tensor, y: Tensor) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        k = math.prod(per_axis(m.kernel_size, x.dim() - 2))
        if m.transposed:  # every input value is scattered through a k-window of C_out/groups
            return x.numel() * (m.out_channels // m.groups) * k
        return y.numel() * (m.in_channels // m.groups) * k
    if isinstance(m, nn.Linear):
        return y.numel() * m.in_features
    return 0


# --------------------------------------------------------------------------- the pass
@dataclass(eq=False)
class _Call:
    module: nn.Module
    name: str
    depth: int
    parent: _Call | None
    is_row: bool
    params: int = 0
    trainable: int = 0
    macs: int = 0
    shape: tuple[int, ...] | None = None
    state: object = None


def _owned(model: nn.Module) -> dict[int, tuple[int, int]]:
    """Module id -> (params, trainable) of the parameters it owns (each tensor once)."""
    seen: set[int] = set()
    owned: dict[int, tuple[int, int]] = {}
    for m in model.modules():
        n = t = 0
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
                t += p.numel() if p.requires_grad else 0
        owned[id(m)] = (n, t)
    return owned


def _run(model: nn.Module, shape: tuple[int, ...], device: torch.device | str | None, owned) -> tuple[list[_Call], Tensor]:
    names = {id(m): n for n, m in model.named_modules()}
    calls: list[_Call] = []
    stack: list[_Call] = []
    first_seen: set[int] = set()

    def pre(m, _inputs):
        leaf = next(m.children(), None) is None
        call = _Call(m, names.get(id(m), "?"), len(stack), stack[-1] if stack else None, leaf or owned[id(m)][0] > 0)
        if call.is_row and id(m) not in first_seen:
            first_seen.add(id(m))
            call.params, call.trainable = owned[id(m)]
        calls.append(call)
        stack.append(call)

    def post(m, inputs, output):
        call = stack.pop()
        ins = [t for t in tree_flatten(inputs)[0] if isinstance(t, Tensor)]
        outs = [t for t in tree_flatten(output)[0] if isinstance(t, Tensor)]
        if not outs:
            return
        y = outs[0]
        if next(m.children(), None) is None and ins:
            x = ins[0]
            rule = window_rule(m, x, y)
            if rule is not None:
                state = window(state_of(x), *rule) if state_of(x) is not None else None
                for o in outs:
                    set_state(o, state)
            elif (x.dim() == y.dim() and x.shape[2:] == y.shape[2:]) or state_of(y) is None:
                # element-wise layer (norm, LRN, activation): as its input, whatever happened inside
                propagate(ins, outs)
            # else keep what the functional ops inside computed (e.g. F.pad + F.max_pool2d)
            call.macs = _macs(m, ins[0], y)
        call.shape = tuple(y.shape[1:])
        call.state = state_of(y)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    meta = str(device) == "meta"
    x = torch.zeros(shape, device=device)
    n = len(shape) - 2
    set_state(x, pixel_grid(n))  # pixel i covers [i, i+1): centre i+0.5
    try:
        with torch.no_grad(), Tracker():
            if meta:
                tensors = {k: torch.empty_like(v, device="meta") for k, v in model.named_parameters()}
                tensors.update({k: torch.empty_like(v, device="meta") for k, v in model.named_buffers()})
                y = functional_call(model, tensors, (x,))
            else:
                y = model(x)
    except Exception as exc:
        where = f" in module {stack[-1].name or '<model>'!r} ({type(stack[-1].module).__name__})" if stack else ""
        exc.detkit_where = where  # type: ignore[attr-defined]
        raise
    finally:
        for h in handles:
            h.remove()
    return calls, y


def _rows(calls: list[_Call], depth: int | None, model: nn.Module, owned) -> list[LayerRow]:
    def row(c: _Call, members: list[_Call]) -> LayerRow:
        st = c.state if isinstance(c.state, RF) else None
        return LayerRow(
            name=c.name or type(c.module).__name__, type=type(c.module).__name__, depth=c.depth,
            output_shape=c.shape, params=sum(m.params for m in members),
            trainable=sum(m.trainable for m in members), macs=sum(m.macs for m in members),
            stride=st.jump if st else None, rf=st.rf if st else None, rf_start=st.start if st else None,
        )

    if depth is None:
        rows = [row(c, [c]) for c in calls if c.is_row]
    else:
        groups: dict[int, list[_Call]] = {}
        for c in calls:
            if not c.is_row:
                continue
            a = c
            while a.depth > depth:
                a = a.parent
            groups.setdefault(id(a), []).append(c)
        rows = [row(c, groups[id(c)]) for c in calls if id(c) in groups]
    # parameters of modules never called (e.g. auxiliary classifiers in eval mode)
    called = {id(c.module) for c in calls}
    lost: dict[str, list[nn.Module]] = {}
    for name, m in model.named_modules():
        if id(m) not in called and owned[id(m)][0] > 0:
            key = name if depth is None else ".".join(name.split(".")[: max(depth, 1)])
            lost.setdefault(key, []).append(m)
    for key, mods in lost.items():
        rows.append(LayerRow(
            name=key, type=type(model.get_submodule(key)).__name__, depth=key.count(".") + 1,
            output_shape=None, params=sum(owned[id(m)][0] for m in mods),
            trainable=sum(owned[id(m)][1] for m in mods), macs=0, stride=None, rf=None, called=False,
        ))
    return rows


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if (not isinstance(input_size, Sequence) or len(input_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        raise SummaryError(f"input_size must be a positive int or (height, width) pair of them, got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def _summarize_module(model: nn.Module, shape: tuple[int, ...], name: str, depth, device) -> Summary:
    owned = _owned(model)
    training = {m: m.training for m in model.modules()}
    model.eval()  # inference-time graph: no dropout, no aux heads, BN running statistics
    try:
        if device is None:
            device = "meta"
        try:
            calls, y = _run(model, shape, device, owned)
        except (NotImplementedError, RuntimeError):
            if str(device) != "meta":
                raise
            # some op has no meta kernel: run for real on the model's own device
            p = next(iter(model.parameters()), None)
            calls, y = _run(model, shape, p.device if p is not None else "cpu", owned)
    except Exception as exc:
        where = getattr(exc, "detkit_where", "")
        raise SummaryError(
            f"summary of {name}: forward pass at input {'×'.join(map(str, shape))} failed{where}: {exc}"
        ) from exc
    finally:
        for m, flag in training.items():
            m.train(flag)
    y = y if isinstance(y, Tensor) else next((t for t in tree_flatten(y)[0] if isinstance(t, Tensor)), None)
    st = state_of(y) if y is not None else None
    st = st if isinstance(st, RF) else None
    return Summary(
        name=name, input_shape=tuple(shape), rows=tuple(_rows(calls, depth, model, owned)),
        output_shape=tuple(y.shape[1:]) if y is not None else None,
        output_stride=st.jump if st else None, output_rf=st.rf if st else None,
    )


def _is_backbone(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("trunk", "region_head", "out_channels", "roi_size"))


def summarize(
    model: nn.Module,
    input_size: tuple[int, int] | int,
    *,
    depth: int | None = None,
    in_channels: int = 3,
    device: torch.device | str | None = None,
) -> Summary:
    """Summarise ``model`` on one ``(1, in_channels, H, W)`` image (``input_size`` = H or (H, W)).

    ``depth=None`` gives one row per leaf-module call; ``depth=k`` merges everything called inside a
    module at call depth ``k`` (the model itself is depth 0) into that module's row. ``device``:
    ``None``/``"meta"`` computes shapes only (falls back to a real pass if an op has no meta
    kernel). A Backbone gives parts ``trunk`` (at the image) and ``region_head`` (at
    ``(1, out_channels, roi_size, roi_size)``), and rows named ``trunk.*`` / ``region_head.*``.
    """
    h, w = _size(input_size)
    if not isinstance(model, nn.Module):
        raise SummaryError(f"summarize expects an nn.Module, got {type(model).__name__}")
    name = getattr(model, "name", "") or type(model).__name__
    if not _is_backbone(model):
        return _summarize_module(model, (1, in_channels, h, w), name, depth, device)
    trunk = _summarize_module(model.trunk, (1, in_channels, h, w), "trunk", depth, device)
    roi = int(model.roi_size)
    head = _summarize_module(model.region_head, (1, int(model.out_channels), roi, roi), "region_head", depth, device)
    rows = [
        LayerRow(**{**r.__dict__, "name": f"{p.name}.{r.name}" if r.depth else p.name})
        for p in (trunk, head) for r in p.rows
    ]
    return Summary(
        name=name, input_shape=trunk.input_shape, rows=tuple(rows), output_shape=head.output_shape,
        output_stride=None, output_rf=None, parts=(trunk, head),
    )
