"""Per-image NMS that keeps only the best ``top_n`` survivors, and packing them into fixed slots.

The RPN (Faster R-CNN §3.1) runs NMS 0.7 over the top 6000-12000 boxes of each image but keeps
only the first 300-2000 survivors. Greedy NMS decides whether a box survives from the boxes
scored above it alone, so the survivors among the ``m`` best-scored boxes are exactly the
survivors that full NMS would return from those ``m``. :func:`nms_top_n` therefore runs
``torchvision.ops.batched_nms`` on a growing prefix (``2 * top_n`` boxes, then twice as many, ...)
and stops as soon as every image has ``top_n`` survivors. On the CPU, NMS costs about
(survivors x boxes), so this is several times cheaper than NMS over all boxes with the same result.
NMS is given each box's rank rather than its score, so boxes of equal score (common with bf16
logits) are visited in the order given, the same in every round. torchvision's NMS has no "stop
after k" argument, hence this wrapper.

On CUDA the prefix loop would cost a host sync per round while torchvision's GPU kernel does not
slow down the same way, so there NMS runs once over all boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms


def nms_top_n(boxes: Tensor, valid: Tensor, *, iou_threshold: float, top_n: int) -> tuple[Tensor, Tensor]:
    """Greedy NMS per image, keeping each image's ``top_n`` best survivors.

    Args:
        boxes: ``(N, K, 4)`` boxes ``(x1, y1, x2, y2)`` of ``N`` images, each row best first (as
            ``Tensor.topk`` returns them).
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
    m = k if boxes.is_cuda else min(k, 2 * top_n)
    image_idx = torch.arange(n, device=boxes.device)[:, None].expand(n, k)
    rank = -torch.arange(k, device=boxes.device, dtype=torch.float32)[None].expand(n, k)  # exact up to 2**24
    while True:
        take = valid[:, :m]
        flat_boxes, flat_rank, flat_img = boxes[:, :m][take], rank[:, :m][take], image_idx[:, :m][take]
        kept = batched_nms(flat_boxes, flat_rank, flat_img, iou_threshold)  # in the given order
        if m == k or n == 0 or int(torch.bincount(flat_img[kept], minlength=n).min()) >= top_n:
            return top_per_image(flat_boxes[kept], flat_img[kept], n, top_n)
        m = min(k, 2 * m)


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
