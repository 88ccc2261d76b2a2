"""Property-based tests (hypothesis) of the numeric core: box coding, IoU, matching, sampling.

Random boxes and scores instead of hand-worked examples; the ``ci`` profile (tests/conftest.py)
fixes the examples so every run checks the same ones.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torchvision.ops import box_iou

from detkit.ops.box_coder import BoxCoder
from detkit.ops.matcher import Matcher, batched_box_iou
from detkit.ops.sampler import sample_balanced

coord = st.floats(0.0, 500.0, allow_nan=False, width=32)
side = st.floats(1.0, 300.0, allow_nan=False, width=32)


@st.composite
def boxes(draw, n=None, min_n=0, max_n=12):
    """``(n, 4)`` float32 xyxy boxes with sides >= 1 px."""
    n = draw(st.integers(min_n, max_n)) if n is None else n
    xy = draw(arrays(np.float32, (n, 2), elements=coord))
    wh = draw(arrays(np.float32, (n, 2), elements=side))
    return torch.from_numpy(np.concatenate([xy, xy + wh], axis=1))


weights = st.tuples(*[st.floats(0.5, 20.0, allow_nan=False)] * 4)


@given(data=st.data(), w=weights)
def test_encode_then_decode_gives_the_box_back(data, w):
    n = data.draw(st.integers(1, 10))
    target, reference = data.draw(boxes(n)), data.draw(boxes(n))
    coder = BoxCoder(w, scale_clamp=float("inf"))
    back = coder.decode(coder.encode(target, reference), reference)
    torch.testing.assert_close(back, target, rtol=1e-4, atol=1e-2)


@given(a=boxes(min_n=1), b=boxes(min_n=1))
def test_batched_iou_equals_torchvision(a, b):
    ours = batched_box_iou(a[None].double(), b[None].double())[0]
    torch.testing.assert_close(ours, box_iou(a.double(), b.double()), rtol=1e-9, atol=1e-9)
    assert ((ours >= 0) & (ours <= 1 + 1e-12)).all()


@given(gt=boxes(min_n=1, max_n=6), anchors=boxes(min_n=1, max_n=40),
       lo=st.floats(0.05, 0.45), hi=st.floats(0.5, 0.9))
def test_rpn_matcher_respects_thresholds_and_keeps_every_best_anchor(gt, anchors, lo, hi):
    iou = batched_box_iou(gt[None], anchors[None])  # (1, G, M)
    matches, labels = Matcher(thresholds=(lo, hi), labels=(0, -1, 1), allow_low_quality_matches=True)(iou)
    best = iou[0].max(dim=0).values  # each anchor's best IoU
    labels, matches = labels[0], matches[0]
    assert ((labels == 0) == (best < lo) & (labels != 1)).all()  # negatives: below lo, unless a best anchor
    assert (best[labels == -1] >= lo).all() and (best[labels == -1] < hi).all()
    assert (labels[best >= hi] == 1).all()
    for g in range(iou.shape[1]):  # the anchor(s) with the highest IoU of every ground truth are positive
        top = iou[0, g].max()
        if top > 0:
            assert (labels[iou[0, g] == top] == 1).all()
    # a positive is matched to a ground truth it overlaps most
    pos = labels == 1
    assert torch.equal(iou[0, matches[pos], torch.nonzero(pos).flatten()], best[pos])


@given(labels=arrays(np.int8, st.tuples(st.integers(1, 3), st.integers(0, 60)), elements=st.sampled_from([-1, 0, 1])),
       num=st.integers(1, 40), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_sampler_keeps_its_quota_and_never_samples_ignored(labels, num, frac, seed):
    lab = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    index, positive, valid = sample_balanced(lab, num_samples=num, positive_fraction=frac, generator=gen)
    assert index.shape == positive.shape == valid.shape == (lab.shape[0], num)
    for i in range(lab.shape[0]):
        picked = index[i][valid[i]]
        assert len(set(picked.tolist())) == len(picked)  # no box twice
        assert (lab[i][picked] != -1).all()  # never an ignored box
        assert torch.equal(lab[i][index[i][positive[i]]] == 1, torch.ones(int(positive[i].sum()), dtype=torch.bool))
        assert (lab[i][index[i][valid[i] & ~positive[i]]] == 0).all()
        n_pos, n_neg = int((lab[i] == 1).sum()), int((lab[i] == 0).sum())
        assert int(positive[i].sum()) == min(n_pos, int(num * frac))  # the quota, or all there are
        assert int(valid[i].sum()) == min(num, int(positive[i].sum()) + n_neg)  # negatives fill the rest
