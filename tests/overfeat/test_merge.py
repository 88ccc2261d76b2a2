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
    with pytest.raises(ValueError, match="merge.py"):
        merge_detections(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.int64), method="soft")
    with pytest.raises(ValueError, match="merge.py"):
        greedy_merge(torch.zeros(2, 4), torch.zeros(3))
