"""Property-based tests (hypothesis) of OverFeat's greedy merge."""
from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from detkit.overfeat.merge import greedy_merge
from tests.ops.test_properties import boxes


@given(b=boxes(min_n=0, max_n=30), t=st.floats(0.0, 2.0), conf=st.sampled_from(["sum", "max"]),
       weighting=st.sampled_from(["mean", "score"]), seed=st.integers(0, 2**31 - 1))
def test_merge_never_adds_boxes_and_keeps_every_member(b, t, conf, weighting, seed):
    scores = torch.rand(len(b), generator=torch.Generator().manual_seed(seed)) + 0.01
    merged, confidence, members = greedy_merge(b, scores, threshold=t, confidence=conf, weighting=weighting)
    assert merged.shape[0] <= b.shape[0] and confidence.shape == merged.shape[:1]
    assert members.shape == (b.shape[0],)
    if len(b):  # every input sits in one output cluster, and every cluster has a member
        assert set(members.tolist()) == set(range(merged.shape[0]))
        for c in range(merged.shape[0]):
            s = scores[members == c]
            expected = s.sum() if conf == "sum" else s.max()
            torch.testing.assert_close(confidence[c], expected.to(confidence.dtype))
