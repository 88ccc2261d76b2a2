import pytest
import torch

from detkit.ops.sampler import sample_balanced


def _labels(num_pos, num_neg, num_ignored, seed=0):
    lab = torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignored, dtype=torch.int8)
    return lab[torch.randperm(len(lab), generator=torch.Generator().manual_seed(seed))]


def _check(labels, index, positive, valid):
    picked = labels[index[valid]]
    assert (picked[positive[valid]] == 1).all()
    assert (picked[~positive[valid]] == 0).all()
    assert len(set(index[valid].tolist())) == int(valid.sum())  # no box drawn twice


def test_exact_counts_when_plenty():
    labels = _labels(300, 1000, 50)
    index, positive, valid = sample_balanced(labels[None], num_samples=256, positive_fraction=0.5)
    assert int(positive.sum()) == 128 and int((valid & ~positive).sum()) == 128 and bool(valid.all())
    _check(labels, index[0], positive[0], valid[0])


def test_negatives_fill_missing_positives():
    labels = _labels(10, 1000, 0)
    index, positive, valid = sample_balanced(labels[None], num_samples=256, positive_fraction=0.5)
    assert int(positive.sum()) == 10 and int(valid.sum()) == 256
    _check(labels, index[0], positive[0], valid[0])


def test_too_few_boxes_leaves_slots_empty_and_batches_images():
    a, b = _labels(5, 20, 100), _labels(40, 85, 0)
    index, positive, valid = sample_balanced(torch.stack((a, b)), num_samples=64, positive_fraction=0.25)
    assert valid[0].sum() == 25 and positive[0].sum() == 5
    assert valid[1].sum() == 64 and positive[1].sum() == 16
    _check(a, index[0], positive[0], valid[0])
    _check(b, index[1], positive[1], valid[1])


def test_draws_are_random_subsets():
    labels = _labels(200, 200, 0)[None]
    first = set(sample_balanced(labels, num_samples=16, positive_fraction=0.5)[0][0].tolist())
    second = set(sample_balanced(labels, num_samples=16, positive_fraction=0.5)[0][0].tolist())
    assert first != second


def test_no_boxes_and_bad_input():
    index, positive, valid = sample_balanced(torch.zeros((2, 0), dtype=torch.int8), num_samples=8,
                                             positive_fraction=0.5)
    assert index.shape == (2, 8) and not valid.any()
    with pytest.raises(ValueError, match="^sample_balanced: "):
        sample_balanced(torch.zeros(5), num_samples=4, positive_fraction=0.5)
