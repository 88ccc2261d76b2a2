"""GroupedBatchSampler: aspect groups, determinism per (seed, epoch), DDP shards."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from detkit.data.sampler import GroupedBatchSampler, aspect_groups, build_batch_sampler


class _FakeDataset:
    def __init__(self, ratios):
        self.ratios = list(ratios)

    def __len__(self):
        return len(self.ratios)

    def aspect_ratios(self):
        return self.ratios


RATIOS = [1.5, 0.75, 1.0, 0.5, 2.0, 1.33, 0.8, 1.1, 0.6, 1.7, 1.25, 0.9, 1.0, 0.7, 3.0, 1.2, 0.66]


def test_aspect_groups_rule():
    assert aspect_groups([1.0, 1.01, 0.99, 0.5, 2.0]) == [0, 0, 1, 1, 0]  # w >= h -> 0, h > w -> 1


def test_batches_never_mix_aspect_groups_and_cover_everything():
    groups = aspect_groups(RATIOS)
    sampler = build_batch_sampler(_FakeDataset(RATIOS), batch_size=3, shuffle=True, seed=1,
                                  group_by_aspect_ratio=True)
    batches = list(sampler)
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert sorted(itertools.chain(*batches)) == list(range(len(RATIOS)))
    assert len(sampler) == len(batches)
    # 10 landscape -> 3 + 3 + 3 + 1, 7 portrait -> 3 + 3 + 1.
    assert sorted(len(b) for b in batches) == [1, 1, 3, 3, 3, 3, 3]


def test_without_grouping_batches_mix_and_drop_last():
    sampler = build_batch_sampler(_FakeDataset(RATIOS), batch_size=4, shuffle=False, seed=0,
                                  group_by_aspect_ratio=False, drop_last=True)
    batches = list(sampler)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]  # index order
    assert len(sampler) == 4


def test_same_seed_and_epoch_give_same_order():
    a = GroupedBatchSampler(aspect_groups(RATIOS), 2, seed=7)
    b = GroupedBatchSampler(aspect_groups(RATIOS), 2, seed=7)  # e.g. a resumed run
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again replays the epoch
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first  # a new epoch reshuffles
    c = GroupedBatchSampler(aspect_groups(RATIOS), 2, seed=8)
    c.set_epoch(3)
    assert list(c) != first  # so does a new seed


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_shards_covering_the_epoch(drop_last):
    n, world, bs = 50, 3, 2
    rng = np.random.default_rng(0)
    groups = list(rng.integers(0, 2, size=n))
    samplers = [GroupedBatchSampler(groups, bs, seed=5, drop_last=drop_last, rank=r, world_size=world)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    per_rank = [list(s) for s in samplers]
    # Same number of batches on every rank (a DDP step needs every rank).
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
    # Step k of every rank comes from the same aspect group (one global batch).
    for step in zip(*per_rank):
        assert len({groups[i] for b in step for i in b}) == 1
    global_batches = samplers[0].global_batches()
    for k, gb in enumerate(global_batches):  # rank r holds slice r of global batch k
        assert list(itertools.chain(*(p[k] for p in per_rank))) == gb
    shards = [set(itertools.chain(*p)) for p in per_rank]
    if drop_last:
        assert all(len(b) == bs for p in per_rank for b in p)
        for x, y in itertools.combinations(shards, 2):
            assert not x & y
        counts = np.bincount(groups)
        expected = sum(c // (bs * world) * bs * world for c in counts)
        assert sum(len(s) for s in shards) == expected
    else:
        assert set.union(*shards) == set(range(n))  # the whole epoch is covered
        # Repeats exist only to pad a group's short last global batch to a multiple of world_size.
        total = sum(len(b) for p in per_rank for b in p)
        assert n <= total <= n + 2 * (world - 1)


def test_single_rank_equals_concatenated_global_batches():
    s = GroupedBatchSampler([0] * 10, 3, shuffle=True, seed=0)
    assert list(s) == s.global_batches()
    assert sorted(itertools.chain(*s)) == list(range(10))


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"rank": 2, "world_size": 2}, {"world_size": 0}])
def test_bad_arguments(kwargs):
    args = {"batch_size": 2, **kwargs}
    bs = args.pop("batch_size")
    with pytest.raises(ValueError):
        GroupedBatchSampler([0, 1], bs, **args)
