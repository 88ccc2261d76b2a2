"""RoI Align as two matrix products, for training on the CPU.

RoI Align (``torchvision.ops.roi_align`` with ``aligned=True`` and a fixed ``sampling_ratio``
``s``) samples each of a region's ``S x S`` bins at ``s x s`` points, each point bilinearly from
the four feature cells around it, and averages them. The sample points of a region form a grid
(their rows share a ``y``, their columns an ``x``) and bilinear weights factor into a ``y`` part
times an ``x`` part, so for every channel

    out[r, c] = A_y[r] @ F[b_r, c] @ A_x[r]^T        (S x S) = (S x H)(H x W)(W x S)

where ``A_y[r][i, h]`` is the mean over bin row ``i``'s ``s`` sample rows of their interpolation
weight on feature row ``h`` (and ``A_x`` the same for columns). Two dense matrix products per
image replace the per-point loops, and autograd's backward is two more. That is why this is
written here: on the CPU torchvision's backward scatters every sample's four weights into the
feature gradient one channel at a time: for the CPU preset's 4 images x 64 RoIs of a
``(4, 128, 30, 40)`` map, forward and backward took 121 ms at one thread (11 % of a training
step), 42 ms here. The forward alone is not faster than torchvision's, so
:class:`~detkit.roi_heads.roi_pool.RoIPool` uses this only when a gradient is wanted.

The weights follow torchvision's kernel exactly: a point outside ``[-1, H] x [-1, W]`` counts 0,
coordinates below 0 are clamped to 0, and one at or past the last row / column takes that row /
column alone. Results equal torchvision's up to float rounding (``tests/roi_heads``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def roi_align_separable(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                        sampling_ratio: int) -> Tensor:
    """RoI Align (``aligned=True``) of ``(R, 5)`` rows ``(image index, x1, y1, x2, y2)`` in image
    pixels on ``(N, C, H, W)`` features -> ``(R, C, S, S)``, ``S = output_size``, in the features'
    dtype (computed in float32, float64 for float64 features). No gradient reaches the boxes, as
    in torchvision.

    Raises:
        ValueError: ``sampling_ratio`` is not positive (the adaptive count differs per region).
    """
    if sampling_ratio <= 0:
        raise ValueError(f"roi_align_separable: sampling_ratio must be positive, got {sampling_ratio}")
    n, c, h, w = features.shape
    s = int(output_size)
    dtype = features.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.autocast(features.device.type, enabled=False):  # keep torchvision's float32 sampling
        features, rois = features.to(work), rois.detach().to(work)
        box = rois[:, 1:] * spatial_scale
        a_y = _axis_weights(box[:, 1] - 0.5, box[:, 3] - box[:, 1], h, s, sampling_ratio)  # (R, S, H)
        a_x = _axis_weights(box[:, 0] - 0.5, box[:, 2] - box[:, 0], w, s, sampling_ratio)  # (R, S, W)
        rows = features.permute(0, 2, 1, 3).reshape(n, h, c * w)  # (N, H, C*W): one GEMM per image
        image = rois[:, 0].long()
        out = features.new_zeros((len(rois), c, s, s))
        for i in range(n):
            idx = (image == i).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            by_rows = (a_y[idx].reshape(-1, h) @ rows[i]).view(len(idx), s * c, w)  # (P, S*C, W)
            pooled = torch.bmm(by_rows, a_x[idx].transpose(1, 2))  # (P, S*C, S)
            out[idx] = pooled.view(len(idx), s, c, s).transpose(1, 2)
    return out.to(dtype)


def _axis_weights(start: Tensor, length: Tensor, size: int, bins: int, samples: int) -> Tensor:
    """``(R,)`` region starts and lengths along one axis (feature cells) -> ``(R, bins, size)``:
    each bin's mean interpolation weight on each of the ``size`` cells (module docstring)."""
    step = torch.arange(bins, dtype=start.dtype, device=start.device)[:, None]
    offset = (torch.arange(samples, dtype=start.dtype, device=start.device)[None, :] + 0.5) / samples
    p = start[:, None, None] + (step + offset)[None] * (length / bins)[:, None, None]  # (R, bins, samples)
    inside = ((p >= -1.0) & (p <= size)).to(p.dtype)
    p = p.clamp(0, size)  # outside points weigh 0 anyway; the upper bound keeps inf * 0 from making NaN
    low = p.floor().clamp(max=size - 1)
    high = (low + 1).clamp(max=size - 1)  # past the last cell both corners are it: its weight is 1
    frac = p - low  # the high corner's weight
    weights = torch.zeros(*p.shape, size, dtype=p.dtype, device=p.device)
    weights.scatter_add_(3, low.long()[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(3, high.long()[..., None], (frac * inside)[..., None])
    return weights.mean(2)
