"""R-CNN region warping (R-CNN §2.1 and appendix A, "warp" with context padding ``p = 16``).

R-CNN turns every proposal into a fixed ``S x S`` network input (``S = 227`` for AlexNet/ZF, 224
for the others: ``Backbone.input_size``) by *anisotropic* scaling, after dilating the box so that
the warped region holds exactly ``p`` pixels of image context around the original box.

Derivation of the dilation. Let the box have width ``w`` and let it be enlarged by ``d`` on each
side to ``w' = w + 2d``. Warping scales x by ``S / w'``, so the original box becomes
``w S / w'`` wide, and we want that to be ``S - 2p`` (``p`` warped pixels left and right)::

    w S / (w + 2d) = S - 2p   =>   w + 2d = w S / (S - 2p)   =>   d = p * w / (S - 2p)

i.e. each side grows by ``p * (box side) / (S - 2p)`` — the box is scaled about its centre by
``S / (S - 2p)`` (227/195 for AlexNet), independently in x and y. This is ``rcnn_im_crop.m``'s
``scale = crop_size / (crop_size - 2 * padding)``. Context falling outside the image is filled with
the image mean; on mean-subtracted (normalised) images that is zero, which is what we use.

Implementation: one batched ``torchvision.ops.roi_align`` over the whole image tensor on its own
device, instead of R-CNN's per-box ``imresize`` (OpenCV ``cv2.resize`` here). ``roi_align`` with
``aligned=True`` and one sample per output pixel evaluates the bilinear interpolant at the centre of
each warped pixel, exactly ``cv2.resize(crop, (S, S), interpolation=INTER_LINEAR)`` (both map
output pixel ``j`` to input ``x1 + (j + 0.5) * w / S - 0.5``). The images are placed on a zero
canvas with a one-pixel zero border first, because ``roi_align`` *clamps* samples within one pixel
of the image edge to the edge value; with the border, samples outside the image blend towards zero
(the mean) exactly as bilinear resizing of a mean-padded crop does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align


def _check_sizes(output_size: int, context: int, where: str) -> None:
    if output_size <= 2 * context or context < 0:
        raise ValueError(f"{where}: need 0 <= 2 * context < output_size, got context={context}, "
                         f"output_size={output_size}")


def dilate_boxes(boxes: Tensor, *, output_size: int, context: int = 16) -> Tensor:
    """R-CNN's context dilation: scale ``(..., 4)`` xyxy boxes about their centres by
    ``output_size / (output_size - 2 * context)`` so that, once warped to ``output_size``, the
    original box is surrounded by ``context`` pixels on every side (see the module docstring).
    """
    _check_sizes(output_size, context, "dilate_boxes")
    scale = output_size / (output_size - 2 * context)
    boxes = boxes.float()
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    hw = (boxes[..., 2] - boxes[..., 0]) * (scale / 2)
    hh = (boxes[..., 3] - boxes[..., 1]) * (scale / 2)
    return torch.stack((cx - hw, cy - hh, cx + hw, cy + hh), dim=-1)


def warp_regions(images: Tensor, boxes: Sequence[Tensor], *, output_size: int, context: int = 16,
                 image_sizes: Sequence[tuple[int, int]] | None = None,
                 sampling_ratio: int = -1) -> Tensor:
    """Crop every proposal with context and warp it to ``S x S`` ("warped region", R-CNN).

    Args:
        images: ``(N, 3, H, W)`` float images, already normalised (mean-subtracted), so that zero
            is the image mean R-CNN fills out-of-image context with.
        boxes: ``N`` tensors ``(P_i, 4)`` of xyxy proposals in continuous pixel coordinates of the
            corresponding image (0-based, ``x2 - x1`` = width; ``detkit/data/record.py``).
        output_size: ``S`` — 227 for AlexNet/ZF, 224 for the others (``Backbone.input_size``).
        context: ``p``, warped pixels of context around each box (R-CNN: 16; 0 = tight warp).
        image_sizes: ``(h, w)`` of each image inside a zero-padded batch (``ImageBatch``); the
            padding is treated as outside the image (filled with the mean). ``None``: full size.
        sampling_ratio: ``roi_align`` samples per output pixel side. The default ``-1`` (adaptive,
            ``ceil(box side / S)``) is exactly bilinear resizing (one sample, cv2 INTER_LINEAR)
            whenever the dilated box is at most ``S`` wide — most selective-search boxes — and
            averages ``ceil(side / S)^2`` samples when shrinking a bigger box, an anti-aliasing
            filter like the one MATLAB's ``imresize`` applied in the original R-CNN code; a fixed
            1 would alias large boxes, a fixed 2 would blur every enlarged crop.

    Returns:
        ``(sum P_i, 3, S, S)`` warped regions, image by image in the order given, same dtype and
        device as ``images``. Memory is ``sum P_i * 3 * S^2`` values (2000 boxes at 227: 1.2 GB
        in float32): callers warp proposals in chunks.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"warp_regions: images must be a float (N, C, H, W) tensor, got "
                         f"{tuple(images.shape)} {images.dtype}")
    _check_sizes(output_size, context, "warp_regions")
    n, _, h, w = images.shape
    if len(boxes) != n:
        raise ValueError(f"warp_regions: {len(boxes)} box tensors for {n} images")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"warp_regions: boxes[{i}] must be (P, 4), got {tuple(b.shape)}")
    if image_sizes is not None and len(image_sizes) != n:
        raise ValueError(f"warp_regions: {len(image_sizes)} image sizes for {n} images")

    # Zero canvas with a one-pixel border (see the module docstring); padding of a batch is
    # zeroed too so that it reads as "outside the image" = mean.
    canvas = images.new_zeros(n, images.shape[1], h + 2, w + 2)
    if image_sizes is None:
        canvas[:, :, 1:h + 1, 1:w + 1] = images
    else:
        for i, (hi, wi) in enumerate(image_sizes):
            canvas[i, :, 1:hi + 1, 1:wi + 1] = images[i, :, :hi, :wi]

    rows = []
    for i, b in enumerate(boxes):
        d = dilate_boxes(b.to(images.device), output_size=output_size, context=context) + 1.0
        rows.append(torch.cat((torch.full_like(d[:, :1], float(i)), d), dim=1))
    rois = torch.cat(rows).to(images.dtype) if rows else images.new_zeros(0, 5)
    return roi_align(canvas, rois, output_size=(output_size, output_size), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)
