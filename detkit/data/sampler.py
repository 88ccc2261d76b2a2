"""Batch samplers: aspect-ratio grouping, deterministic epochs, and DDP sharding.

Aspect-ratio grouping (as in torchvision's detection references): images with ``w >= h``
("landscape", group 0) and ``h > w`` ("portrait", group 1) are never mixed in one batch, so the
padded batch tensor wastes little memory on padding.

Determinism: the order of epoch ``e`` is a function of ``(seed, e)`` only
(``numpy.random.default_rng([seed, e])``), so a resumed run that calls ``set_epoch(e)`` replays
exactly the batches it would have seen.

DDP sharding: ``batch_size`` is **per rank**. Each epoch is first cut into *global* batches of
``batch_size * world_size`` indices (one aspect group per global batch); rank ``r`` takes the
contiguous slice ``[r * batch_size, (r + 1) * batch_size)`` of every global batch. Every rank
therefore sees the same number of batches (no DDP hang) and the ranks' shards are disjoint and
together cover the epoch. A short last global batch of a group (``drop_last=False``) is padded
with its own first indices, cycled, up to a multiple of ``world_size`` before slicing (the only
place an index can repeat, as in ``DistributedSampler``); with ``drop_last=True`` it is dropped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def aspect_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image: 0 for ``w / h >= 1`` (landscape or square), 1 for ``w / h < 1``."""
    return [0 if a >= 1.0 else 1 for a in aspect_ratios]


class GroupedBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices; each batch holds one group only.

    Args:
        group_ids: group of each dataset index (``aspect_groups`` or all zeros for no grouping).
        batch_size: images per batch **on each rank**.
        shuffle: random order per epoch (seeded by ``(seed, epoch)``), else index order.
        seed: base seed; the same ``(seed, epoch)`` always gives the same batches.
        drop_last: drop each group's short last global batch instead of padding it.
        rank, world_size: this process's DDP rank and the number of ranks (module docstring).
    """

    def __init__(
        self,
        group_ids: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.group_ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (call before each epoch)."""
        self.epoch = int(epoch)

    def _order(self) -> np.ndarray:
        n = len(self.group_ids)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (``batch_size * world_size`` each, before sharding).

        Indices are taken in the epoch's order and appended to their group's buffer; a buffer
        that fills up becomes the next batch, so batches come out in the order they complete.
        Leftovers of each group follow at the end (padded or dropped, see the module docstring).
        """
        full = self.batch_size * self.world_size
        buffers: dict[int, list[int]] = {}
        batches: list[list[int]] = []
        for idx in self._order():
            buf = buffers.setdefault(int(self.group_ids[idx]), [])
            buf.append(int(idx))
            if len(buf) == full:
                batches.append(buf)
                buffers[int(self.group_ids[idx])] = []
        if not self.drop_last:
            for buf in buffers.values():
                if buf:
                    short = len(buf) % self.world_size
                    pad = 0 if short == 0 else self.world_size - short
                    batches.append(buf + [buf[i % len(buf)] for i in range(pad)])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            per_rank = len(batch) // self.world_size  # == batch_size except for a short last batch
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __len__(self) -> int:
        full = self.batch_size * self.world_size
        _, counts = np.unique(self.group_ids, return_counts=True)
        if self.drop_last:
            return int(sum(c // full for c in counts))
        return int(sum(-(-c // full) for c in counts))


def build_batch_sampler(
    dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    group_by_aspect_ratio: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> GroupedBatchSampler:
    """A ``GroupedBatchSampler`` for ``dataset`` (anything with ``__len__`` and ``aspect_ratios()``).

    Pass it as ``DataLoader(dataset, batch_sampler=..., collate_fn=collate_detections)``, and call
    ``sampler.set_epoch(epoch)`` before each epoch. Without ``group_by_aspect_ratio`` all images
    form one group (plain shuffled batching, same determinism and sharding).
    """
    if group_by_aspect_ratio:
        groups = aspect_groups(dataset.aspect_ratios())
    else:
        groups = [0] * len(dataset)
    return GroupedBatchSampler(
        groups, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size
    )
