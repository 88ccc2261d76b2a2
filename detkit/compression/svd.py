"""Truncated SVD of the region head's fully connected layers (Fast R-CNN, Girshick 2015, §3.1).

A ``u x v`` weight ``W`` is factorised as ``W ≈ U_t Σ_t V_t^T`` with the ``t`` largest singular
values, and the layer becomes two: ``Σ_t V_t^T`` (``v -> t``, no bias) then ``U_t`` (``t -> u``,
with the original bias). The multiply-adds per region drop from ``u v`` to ``t (u + v)``. In
detection the region head runs once per RoI (300 per image with an RPN, 2000 with selective
search), so its fc layers are a large share of the test time; the paper's VGG-16 used ``t = 1024``
for fc6 (25088 -> 4096) and ``t = 256`` for fc7 (4096 -> 4096): > 30 % less detection time for
0.3 mAP. Only inference: training the factorised layers is not what the paper did.

Shape letters: ``u`` output and ``v`` input features of a layer, ``t`` the rank kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class SVDLayerReport:
    """One factorised layer: its name in the model, ``(u, v)``, the rank ``t`` kept, the share of
    the squared singular values (the weight's energy) kept, and multiply-adds per region before
    and after."""

    name: str
    shape: tuple[int, int]
    rank: int
    energy_kept: float
    macs_before: int
    macs_after: int


def truncated_svd(layer: nn.Linear, rank: int) -> tuple[nn.Sequential, float]:
    """``layer`` ``(u x v)`` -> ``Sequential(Linear(v, t, bias=False), Linear(t, u))`` with
    ``W ≈ U_t Σ_t V_t^T``, and the share of the weight's energy (sum of squared singular values)
    kept. Computed in float64 on the layer's device; the result has the layer's dtype."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"truncated_svd: expected nn.Linear, got {type(layer).__name__}")
    u, v = layer.weight.shape
    if not 1 <= rank < min(u, v):
        raise ValueError(f"truncated_svd: rank must be in 1..{min(u, v) - 1} for a {u}x{v} layer, got {rank}")
    w = layer.weight.detach().double()
    left, sigma, right_t = torch.linalg.svd(w, full_matrices=False)  # (u, r), (r,), (r, v)
    first = nn.Linear(v, rank, bias=False)
    second = nn.Linear(rank, u, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(sigma[:rank, None] * right_t[:rank])  # Σ_t V_t^T: (t, v)
        second.weight.copy_(left[:, :rank])  # U_t: (u, t)
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    energy = float((sigma[:rank] ** 2).sum() / (sigma ** 2).sum())
    out = nn.Sequential(first, second).to(device=layer.weight.device, dtype=layer.weight.dtype)
    return out.train(layer.training), energy


def compress_region_head(model: nn.Module, ranks: Sequence[int]) -> list[SVDLayerReport]:
    """Factorise the region head's ``nn.Linear`` layers in place, in order (fc6, fc7 for AlexNet,
    ZFNet and VGG-16), with ``ranks[i]`` for the ``i``-th; ``0`` leaves a layer as it is.

    The region head is found as ``model.backbone.region_head`` (the same module the RoI head
    holds). Layers whose factorisation would not save multiply-adds (``t (u + v) >= u v``) are
    refused: the rank is too large to help.

    Raises:
        ValueError: the model has no region head with fully connected layers, or more ranks than
            it has such layers.
    """
    head = getattr(getattr(model, "backbone", None), "region_head", None)
    if head is None:
        raise ValueError(f"compress_region_head: {type(model).__name__} has no backbone.region_head")
    linears = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"compress_region_head: the region head of {type(model).__name__} "
                         f"({model.backbone.name}) has no fully connected layers (ResNet and GoogLeNet "
                         "heads are convolutional)")
    if len(ranks) > len(linears):
        raise ValueError(f"compress_region_head: {len(ranks)} ranks for {len(linears)} fully connected layers "
                         f"({', '.join(n for n, _ in linears)})")
    reports = []
    for (name, layer), rank in zip(linears, ranks):
        if not rank:
            continue
        u, v = layer.weight.shape
        if rank * (u + v) >= u * v:
            raise ValueError(f"compress_region_head: rank {rank} for {name} ({u}x{v}) saves nothing "
                             f"(t (u + v) = {rank * (u + v)} >= u v = {u * v}); use t < {u * v // (u + v)}")
        new, energy = truncated_svd(layer, int(rank))
        _replace(head, name, new)
        reports.append(SVDLayerReport(name=f"backbone.region_head.{name}", shape=(u, v), rank=int(rank),
                                      energy_kept=energy, macs_before=u * v, macs_after=rank * (u + v)))
    return reports


def _replace(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)
