"""Balanced positive/negative sampling of labelled boxes to a fixed number per image.

Used for the RPN's 256 anchors per image (up to 1:1) and Fast R-CNN's hierarchical sampling
(R RoIs per image, 25 % foreground). Batched over images with fixed output shapes and no host
synchronisation: a random key per box and ``topk`` pick a uniform random subset of each class.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sample_balanced(labels: Tensor, *, num_samples: int, positive_fraction: float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Draw up to ``num_samples`` boxes per image, at most ``positive_fraction`` of them positive.

    Negatives fill the places the positives leave (as in both papers). Slots stay empty (``valid``
    False) only when an image has too few labelled boxes altogether.

    Args:
        labels: ``(N, M)`` with ``1`` positive, ``0`` negative, ``-1`` ignored.
        num_samples: ``S``, samples per image (256 RPN, 64 Fast R-CNN).
        positive_fraction: at most ``int(S * positive_fraction)`` positives per image.
        generator: optional random generator (on ``labels``' device) for reproducibility.

    Returns:
        ``index`` ``(N, S)`` int64 into ``M``; ``positive`` ``(N, S)`` bool; ``valid`` ``(N, S)`` bool.
        Positives come first in each row. Invalid slots hold an arbitrary in-range index.
    """
    if labels.dim() != 2:
        raise ValueError(f"sample_balanced: labels must be (N, M), got shape {tuple(labels.shape)}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"sample_balanced: positive_fraction must be in [0, 1], got {positive_fraction}")
    n, m = labels.shape
    s = int(num_samples)
    max_pos = int(s * positive_fraction)
    is_pos = labels == 1
    is_neg = labels == 0
    if m == 0:  # nothing to sample from: all slots empty
        empty = torch.zeros((n, s), dtype=torch.bool, device=labels.device)
        return torch.zeros((n, s), dtype=torch.int64, device=labels.device), empty, empty.clone()
    num_pos = is_pos.sum(dim=1).clamp(max=max_pos)  # (N,)
    num_neg = torch.minimum(is_neg.sum(dim=1), s - num_pos)

    keys = torch.rand((n, m), device=labels.device, generator=generator)
    # Keys in [0, 1) for the wanted class and -1 for the others: the top-k are a uniform random
    # subset of the wanted class, followed by the others (which the counts then cut off).
    k_pos = min(max_pos, m)
    k_neg = min(s, m)
    pos_idx = torch.where(is_pos, keys, -1.0).topk(k_pos, dim=1).indices  # (N, k_pos)
    neg_idx = torch.where(is_neg, keys, -1.0).topk(k_neg, dim=1).indices  # (N, k_neg)

    slot = torch.arange(s, device=labels.device).expand(n, s)
    positive = slot < num_pos[:, None]
    neg_slot = slot - num_pos[:, None]
    valid = positive | (neg_slot < num_neg[:, None])
    if k_pos > 0:
        from_pos = pos_idx.gather(1, slot.clamp(max=k_pos - 1))
    else:
        from_pos = torch.zeros_like(slot)
    from_neg = neg_idx.gather(1, neg_slot.clamp(min=0, max=k_neg - 1))
    index = torch.where(positive, from_pos, from_neg)
    return index, positive, valid
