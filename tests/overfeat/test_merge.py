"""OverFeat greedy merging: overlapping boxes of a class merge, distant ones and other classes don't."""
import pytest
import torch

from detkit.overfeat.merge import greedy_merge, match_score, merge_detections


def test_match_score_by_hand():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[2.0, 0, 12, 10]])  # centres 2 apart, sizes 10, intersection 80, union 120
    assert match_score(a, b).item() == pytest.approx(2 / 10 + (1 - 80 / 120))
    assert match_score(a, a).item() == pytest.approx(0.0)
    far = torch.tensor([[100.0, 100, 110, 110]])
    assert match_score(a, far).item() > 1


def test_two_overlapping_boxes_merge_and_confidences_accumulate():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10]])  # match 1/10 + (1 - 90/110) = 0.28
    scores = torch.tensor([0.6, 0.3])
    merged, total, members = greedy_merge(boxes, scores, threshold=0.5)
    assert merged.shape == (1, 4)
    torch.testing.assert_close(merged[0], torch.tensor([0.5, 0, 10.5, 10]))  # average of coordinates
    assert total.item() == pytest.approx(0.9)
    assert members.tolist() == [0, 0]
    merged, _, _ = greedy_merge(boxes, scores, threshold=0.5, weighting="score")
    torch.testing.assert_close(merged[0], torch.tensor([0.3 / 0.9, 0, (6 + 3.3) / 0.9, 10]))
    # 2 px apart the pair scores 2/10 + (1 - 80/120) = 0.53: above the threshold, kept apart
    merged, _, _ = greedy_merge(torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 12, 10]]), scores, threshold=0.5)
    assert merged.shape == (2, 4)


def test_a_part_inside_a_whole_is_not_a_match():
    # A window on part of an object (inside the object's box, same centre) overlaps it by
    # 400 / 10000: no match, though the intersection is the whole of the smaller box.
    whole = torch.tensor([[0.0, 0, 100, 100]])
    part = torch.tensor([[40.0, 40, 60, 60]])
    assert match_score(whole, part).item() == pytest.approx(1 - 400 / 10000)
    merged, _, members = greedy_merge(torch.cat([whole, part]), torch.tensor([0.9, 0.8]), threshold=0.5)
    assert merged.shape == (2, 4) and members.tolist() == [0, 1]


def test_max_confidence_keeps_the_best_member_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [0.0, 1, 10, 11], [80.0, 80, 90, 90]])
    scores = torch.tensor([0.2, 0.7, 0.4, 0.5])
    merged, conf, members = greedy_merge(boxes, scores, threshold=0.5, confidence="max")
    assert merged.shape == (2, 4)
    assert conf[members[0]].item() == pytest.approx(0.7) and conf[members[3]].item() == pytest.approx(0.5)
    _, conf_sum, members_sum = greedy_merge(boxes, scores, threshold=0.5)
    assert members_sum.tolist() == members.tolist()
    assert conf_sum[members_sum[0]].item() == pytest.approx(1.3)
    with pytest.raises(ValueError, match="confidence"):
        greedy_merge(boxes, scores, confidence="mean")


def test_distant_boxes_stay_apart():
    boxes = torch.tensor([[0.0, 0, 10, 10], [50.0, 50, 60, 60]])
    merged, total, members = greedy_merge(boxes, torch.tensor([0.5, 0.4]), threshold=0.5)
    assert merged.shape == (2, 4) and sorted(total.tolist()) == pytest.approx([0.4, 0.5])
    assert members.tolist() == [0, 1]


def test_cluster_is_mean_of_all_members():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [2.0, 0, 12, 10], [80.0, 80, 90, 90]])
    merged, total, members = greedy_merge(boxes, torch.ones(4), threshold=0.5)
    assert merged.shape == (2, 4)
    big = members[0].item()
    assert members.tolist()[:3] == [big] * 3 and members[3] != big
    torch.testing.assert_close(merged[big], torch.tensor([1.0, 0, 11, 10]))
    assert total[big].item() == pytest.approx(3.0)


def test_different_classes_are_never_merged():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [1.0, 0, 11, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.tensor([0, 1, 0])
    b, s, lab = merge_detections(boxes, scores, labels, method="greedy")
    assert sorted(lab.tolist()) == [0, 1]
    assert s[lab == 0].item() == pytest.approx(1.6) and s[lab == 1].item() == pytest.approx(0.8)


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [0.0, 0, 10, 10]])
    b, s, lab = merge_detections(boxes, torch.tensor([0.9, 0.7, 0.8]), torch.tensor([0, 0, 1]), method="nms")
    assert s.tolist() == pytest.approx([0.9, 0.8]) and lab.tolist() == [0, 1]


def test_bad_arguments():
    with pytest.raises(ValueError, match="^merge_detections: "):
        merge_detections(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.int64), method="soft")
    with pytest.raises(ValueError, match="^greedy_merge: "):
        greedy_merge(torch.zeros(2, 4), torch.zeros(3))


def _reference_merge(boxes, scores, threshold, weighting, confidence):
    """The paper's loop as written: rescan every pair of current clusters for the best match."""
    clusters = [[i] for i in range(len(boxes))]
    w = scores if weighting == "score" else torch.ones_like(scores)

    def box(c):
        return (boxes[c] * w[c, None]).sum(0) / w[c].sum()

    while len(clusters) > 1:
        cur = torch.stack([box(c) for c in clusters])
        m = match_score(cur, cur).double()
        m.fill_diagonal_(float("inf"))
        # the lowest match; ties: the clusters holding the lowest input indices
        n = len(clusters)
        order = sorted((m[a, b].item(), min(clusters[a]), min(clusters[b]), a, b)
                       for a in range(n) for b in range(n) if min(clusters[a]) < min(clusters[b]))
        s, _, _, a, b = order[0]
        if s > threshold:
            break
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    conf = [scores[c].sum() if confidence == "sum" else scores[c].max() for c in clusters]
    return clusters, torch.stack([box(c) for c in clusters]), torch.stack(conf)


@pytest.mark.parametrize("weighting", ["mean", "score"])
@pytest.mark.parametrize("confidence", ["sum", "max"])
@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_heap_merge_equals_the_rescanning_loop(weighting, confidence, threshold):
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(5, 2, generator=g) * 200
    c = centres[torch.randint(0, 5, (40,), generator=g)] + torch.randn(40, 2, generator=g) * 6
    size = 30 + torch.rand(40, 2, generator=g) * 20
    boxes = torch.cat([c - size / 2, c + size / 2], dim=1)
    scores = torch.rand(40, generator=g)
    merged, conf, members = greedy_merge(boxes, scores, threshold=threshold, weighting=weighting,
                                         confidence=confidence)
    clusters, ref_boxes, ref_conf = _reference_merge(boxes.double(), scores.double(), threshold, weighting, confidence)
    assert 5 <= len(clusters) < 40  # the case merges a lot, and not everything
    got = sorted(sorted(torch.nonzero(members == k).squeeze(1).tolist()) for k in range(merged.shape[0]))
    assert got == sorted(sorted(cl) for cl in clusters)
    by_first = {min(cl): k for k, cl in enumerate(clusters)}
    for k in range(merged.shape[0]):
        ref = by_first[int(torch.nonzero(members == k).min())]
        torch.testing.assert_close(merged[k].double(), ref_boxes[ref], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(conf[k].double(), ref_conf[ref], atol=1e-5, rtol=1e-5)
