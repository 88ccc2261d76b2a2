"""Offset max pooling (OverFeat §3.3, "multi-scale classification"): pool the last feature map at
every offset so the classifier sees every shift, then interleave the results into a dense map.

A ``k x k`` max pool with stride ``s`` keeps one of every ``s`` positions; the classifier that
follows then moves over the image in steps of the pool's stride. OverFeat evaluates the pool at
each offset ``(dy, dx)`` in ``{0 .. s-1}^2`` (Δx, Δy ∈ {0, 1, 2} for its 3x3/3 pool), runs the
classifier on each of the ``s^2`` pooled maps, and interleaves the outputs: the output grid then
has the resolution of the map *before* pooling (stride 12 instead of 36 pixels in the paper's
accurate model; the seeds' 1-D figure with 20 values and a 3x1 pool shows the same).

Shape letters: ``N`` images, ``C`` channels, ``s`` the pool stride, ``O = s^2`` offsets.
Offsets are stacked **offset-major** along the batch: row ``o * N + n`` holds image ``n`` pooled at
offset ``o = dy * s + dx``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["offset_max_pool", "interleave_offsets"]


def offset_max_pool(x: Tensor, pool: Callable[[Tensor], Tensor], stride: int) -> Tensor:
    """Max-pool ``x`` at all ``s^2`` offsets: ``(N, C, H, W) -> (s^2 * N, C, h, w)``.

    Args:
        x: the map before the pool (pool5's input).
        pool: the max pool itself (e.g. ``nn.MaxPool2d(3, 3)``), applied unchanged at each offset.
        stride: its stride ``s``.

    The map is first padded by ``s - 1`` rows/columns of ``-inf`` at the bottom/right (ignored by
    a max), so that every offset keeps as many windows as offset ``(0, 0)``; all offsets are then
    cropped to the common size ``h x w`` (the un-padded offset-0 size). Output ``[o * N + n, :, i,
    j]`` is the pool window whose top-left input position is ``(i * s + dy, j * s + dx)`` (plus the
    pool's own padding offset), ``o = dy * s + dx``.
    """
    s = int(stride)
    if s < 1:
        raise ValueError(f"offset_max_pool: stride must be >= 1, got {stride}")
    if x.dim() != 4:
        raise ValueError(f"offset_max_pool: expected an (N, C, H, W) map, got shape {tuple(x.shape)}")
    if s == 1:
        return pool(x)
    padded = F.pad(x, (0, s - 1, 0, s - 1), value=float("-inf"))
    outs = [pool(padded[..., dy:, dx:]) for dy in range(s) for dx in range(s)]
    h = min(o.shape[-2] for o in outs)
    w = min(o.shape[-1] for o in outs)
    return torch.cat([o[..., :h, :w] for o in outs], dim=0)


def interleave_offsets(y: Tensor, stride: int) -> Tensor:
    """Inverse bookkeeping of :func:`offset_max_pool` after the classifier:
    ``(s^2 * N, C, h, w) -> (N, C, s * h, s * w)`` with ``dense[n, :, i*s + dy, j*s + dx] =
    y[(dy*s + dx) * N + n, :, i, j]``.

    Dense location ``u = i * s + dy`` is then the window shifted by ``u`` steps of the pre-pool
    map's stride: a regular grid with ``s`` times the resolution of one offset's output.
    """
    s = int(stride)
    if y.dim() != 4 or y.shape[0] % (s * s):
        raise ValueError(f"interleave_offsets: expected (s^2 * N, C, h, w) with s={s}, got shape {tuple(y.shape)}")
    if s == 1:
        return y
    n = y.shape[0] // (s * s)
    _, c, h, w = y.shape
    # (dy, dx, N, C, h, w) -> (N, C, h, dy, w, dx): row index i*s + dy, column j*s + dx
    return y.reshape(s, s, n, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(n, c, h * s, w * s)
