"""Per-image NMS that keeps only the best ``top_n`` survivors, and packing them into fixed slots.

The RPN (Faster R-CNN §3.1) runs NMS 0.7 over the top 6000 boxes of each test image but keeps
only the first 300 survivors. Greedy NMS decides whether a box survives from the boxes ranked
above it alone, so :func:`nms_top_n` walks each image's boxes in chunks (``2 * top_n`` boxes, then
twice as many, ...): a chunk's boxes that overlap a survivor of the earlier chunks are dropped,
``torchvision.ops.nms`` runs on the rest, and the walk stops once ``top_n`` boxes survive. The
survivors are exactly those of NMS over all boxes, cut to ``top_n``. On the CPU, NMS costs about
(survivors x boxes), so when the RPN's boxes are spread out (many survivors) stopping early is
several times cheaper; torchvision's NMS has no "stop after k" argument, hence this wrapper. NMS is
given each box's rank rather than its score, so boxes of equal score (common with bf16 logits) are
visited in the order given, whatever the chunk.

NMS runs once over all boxes instead on GPUs (a chunk would cost a host sync, and the GPU kernel
does not slow down the same way) and when ``top_n`` is more than an eighth of the boxes (as in
training, 2000 of 12000): the chunks' overlap test against many survivors then costs more than
it saves.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, nms


def nms_top_n(boxes: Tensor, valid: Tensor, *, iou_threshold: float, top_n: int) -> tuple[Tensor, Tensor]:
    """Greedy NMS per image, keeping each image's ``top_n`` best survivors.

    Args:
        boxes: ``(N, K, 4)`` boxes ``(x1, y1, x2, y2)`` of ``N`` images, each row best first (as
            ``Tensor.topk`` returns them); compared in float32, returned as float32.
        valid: ``(N, K)`` bool — boxes that take part (e.g. not too small).
        iou_threshold: a box overlapping a better survivor of its image by more than this is
            suppressed.
        top_n: survivors kept per image (the RPN's ``post_nms_top_n``).

    Returns:
        ``(N, top_n, 4)`` survivors in the given order, zero-padded, and ``(N, top_n)`` bool
        marking the real ones — the same as NMS over all ``K`` boxes followed by keeping the first
        ``top_n`` per image.
    """
    n, k = valid.shape
    boxes = boxes.float()  # torchvision's NMS kernels: float32 boxes and scores of one type
    rank = -torch.arange(k, device=boxes.device, dtype=torch.float32)  # exact up to 2**24
    if boxes.device.type != "cpu" or 8 * top_n > k:
        image_idx = torch.arange(n, device=boxes.device)[:, None].expand(n, k)[valid]
        kept = batched_nms(boxes[valid], rank.expand(n, k)[valid], image_idx, iou_threshold)
        return top_per_image(boxes[valid][kept], image_idx[kept], n, top_n)
    kept = [_survivors(boxes[i], valid[i], rank, iou_threshold, top_n) for i in range(n)]
    image_idx = torch.repeat_interleave(torch.arange(n), torch.tensor([len(j) for j in kept], dtype=torch.long))
    survivors = torch.cat(kept) if kept else image_idx  # no images: both empty
    return top_per_image(boxes[image_idx, survivors], image_idx, n, top_n)


def _survivors(boxes: Tensor, valid: Tensor, rank: Tensor, iou_threshold: float, top_n: int) -> Tensor:
    """Indices into ``boxes`` ``(K, 4)`` of the first ``top_n`` greedy-NMS survivors (one image)."""
    order = valid.nonzero().squeeze(1)
    kept = order[:0]
    start, chunk = 0, 2 * top_n
    while start < len(order) and len(kept) < top_n:
        cand = order[start:start + chunk]
        if len(kept):  # a box overlapping an earlier survivor cannot survive: NMS's own test, float IoU > double t
            cand = cand[~(box_iou(boxes[cand], boxes[kept]).double() > iou_threshold).any(dim=1)]
        kept = torch.cat([kept, cand[nms(boxes[cand], rank[cand], iou_threshold)]])
        start, chunk = start + chunk, 2 * chunk
    return kept[:top_n]


def top_per_image(boxes: Tensor, image_idx: Tensor, num_images: int, top_n: int) -> tuple[Tensor, Tensor]:
    """Scatter score-sorted ``(M, 4)`` boxes of many images into ``(N, top_n, 4)`` slots.

    ``image_idx`` ``(M,)`` says whose each box is; the first ``top_n`` of each image (in the given
    order) are kept. Returns the padded boxes and ``valid`` ``(N, top_n)``. No host sync.
    """
    order = torch.sort(image_idx, stable=True).indices  # group by image, keep score order
    img = image_idx[order]
    counts = torch.bincount(img, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(img.numel(), device=img.device) - starts[img]
    take = rank < top_n
    # Slots past top_n are written to a dump row that is cut off, avoiding a boolean index (sync).
    row = torch.where(take, img, torch.full_like(img, num_images))
    col = torch.where(take, rank, torch.zeros_like(rank))
    out = boxes.new_zeros((num_images + 1, top_n, 4))
    valid = torch.zeros((num_images + 1, top_n), dtype=torch.bool, device=boxes.device)
    out[row, col] = boxes[order]
    valid[row, col] = True
    return out[:num_images], valid[:num_images]
