"""Faster R-CNN anchors: ``len(sizes) * len(aspect_ratios)`` reference boxes at every feature cell.

Shape letters: ``Hf, Wf`` the feature map's size, ``A`` anchors per location.

Conventions:

* **cell centre**: the anchors of feature cell ``(i, j)`` are centred on
  ``((j + 0.5) * stride, (i + 0.5) * stride)`` in continuous image coordinates — the centre of the
  ``stride x stride`` image patch the cell covers. This is the original implementation's base
  anchor ``[0, 0, 15, 15]`` (centre 7.5 in inclusive pixel indices = 8.0 continuous) shifted by
  ``stride``; torchvision puts the centre on the cell's top-left corner instead.
* **aspect ratio** ``r = h / w`` (paper: 1:2, 1:1, 2:1): ``w = size / sqrt(r)``,
  ``h = size * sqrt(r)``, so every anchor of one size has area ``size**2`` (not rounded to whole
  pixels, unlike the original code).
* **order**: index ``(i * Wf + j) * A + a`` with ``a = size_index * len(ratios) + ratio_index``,
  which is the RPN head's output permuted from ``(N, A, Hf, Wf)`` to ``(N, Hf, Wf, A)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for a stride-``stride`` feature map (the paper: 128², 256², 512² × 1:2, 1:1, 2:1).

    Anchors are cached per (feature size, device), since every batch of one size reuses them.
    """

    def __init__(self, *, sizes: Sequence[float] = (128, 256, 512),
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), stride: int = 16) -> None:
        super().__init__()
        if len(sizes) == 0 or len(aspect_ratios) == 0:
            raise ValueError("AnchorGenerator: need at least one anchor size and one aspect ratio")
        if any(float(v) <= 0 for v in (*sizes, *aspect_ratios)) or stride <= 0:
            raise ValueError(f"AnchorGenerator: sizes {tuple(sizes)}, ratios {tuple(aspect_ratios)} and "
                             f"stride {stride} must be positive")
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.stride = int(stride)
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors(self) -> int:
        """``A``, anchors per feature location."""
        return len(self.sizes) * len(self.aspect_ratios)

    def cell_anchors(self) -> Tensor:
        """``(A, 4)`` anchors centred on ``(0, 0)``, in the order described in the module docstring."""
        sizes = torch.tensor(self.sizes, dtype=torch.float64)[:, None]
        ratios = torch.tensor(self.aspect_ratios, dtype=torch.float64)[None, :]
        w = (sizes / ratios.sqrt()).reshape(-1)
        h = (sizes * ratios.sqrt()).reshape(-1)
        return torch.stack((-w / 2, -h / 2, w / 2, h / 2), dim=1).float()

    def grid(self, hf, wf, device: torch.device | str = "cpu") -> Tensor:
        """Uncached :meth:`forward`: ``hf``, ``wf`` may be traced sizes (ONNX export keeps the
        anchor grid dynamic in the image size), so they are only ever passed to ``torch.arange``."""
        cells = self.cell_anchors().to(device)
        cx = (torch.arange(wf, device=device, dtype=torch.float32) + 0.5) * self.stride
        cy = (torch.arange(hf, device=device, dtype=torch.float32) + 0.5) * self.stride
        yy, xx = torch.meshgrid(cy, cx, indexing="ij")
        shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (Hf*Wf, 1, 4)
        return (shifts + cells[None]).reshape(-1, 4)

    def forward(self, feature_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """All anchors of a ``(Hf, Wf)`` feature map -> ``(Hf * Wf * A, 4)`` float32 xyxy."""
        hf, wf = int(feature_size[0]), int(feature_size[1])
        device = torch.device(device)
        key = (hf, wf, device)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        anchors = self.grid(hf, wf, device)
        if len(self._cache) >= 32:  # bounded: multi-scale training sees many sizes
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = anchors
        return anchors
