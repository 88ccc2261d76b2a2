"""``nms_top_n``: NMS on a growing prefix gives what NMS over every box gives, and stops early."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.ops import batched_nms

import detkit.ops.nms as nms_module
from detkit.ops.nms import nms_top_n, top_per_image


def _scene(seed: int, n: int, k: int, extent: float = 200.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` images of ``k`` random boxes with distinct scores sorted per row, and a random mask."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, k, 2, generator=g) * extent
    wh = 4 + torch.rand(n, k, 2, generator=g) * extent / 3
    boxes = torch.cat([xy, xy + wh], dim=2)
    scores = torch.randperm(n * k, generator=g).view(n, k).float().sort(dim=1, descending=True).values
    valid = torch.rand(n, k, generator=g) > 0.1
    return boxes, scores, valid


def _full_nms(boxes, scores, valid, iou, top_n):
    n, k = scores.shape
    img = torch.arange(n)[:, None].expand(n, k)
    b, s, i = boxes[valid], scores[valid], img[valid]
    kept = batched_nms(b, s, i, iou)
    return top_per_image(b[kept], i[kept], n, top_n)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), k=st.integers(1, 300),
       top_n=st.integers(1, 80), iou=st.sampled_from([0.3, 0.5, 0.7, 0.9]))
def test_same_survivors_as_nms_over_every_box(seed, n, k, top_n, iou):
    boxes, scores, valid = _scene(seed, n, k)
    got_boxes, got_valid = nms_top_n(boxes, valid, iou_threshold=iou, top_n=top_n)
    want_boxes, want_valid = _full_nms(boxes, scores, valid, iou, top_n)
    assert torch.equal(got_valid, want_valid)
    assert torch.equal(got_boxes, want_boxes)


def _record_nms_inputs(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = nms_module.nms
    monkeypatch.setattr(nms_module, "nms", lambda b, *a: sizes.append(len(b)) or real(b, *a))
    return sizes


def test_stops_once_every_image_has_top_n(monkeypatch):
    # Spread-out boxes: most survive, so the first 2 * top_n valid boxes of each image are enough
    # and the rest are never looked at.
    boxes, scores, valid = _scene(0, 2, 2000, extent=2000.0)
    sizes = _record_nms_inputs(monkeypatch)
    got_boxes, got_valid = nms_top_n(boxes, valid, iou_threshold=0.7, top_n=50)
    assert sizes == [100, 100]
    want_boxes, want_valid = _full_nms(boxes, scores, valid, 0.7, 50)
    assert torch.equal(got_boxes, want_boxes) and bool(got_valid.all())


def test_walks_on_while_an_image_lacks_survivors(monkeypatch):
    # Image 0: 400 copies of one box, then boxes far apart -> chunks of 40, 80, 160, 320 boxes; the
    # copies in later chunks overlap the first survivor and never reach NMS.
    n, k, top_n = 2, 1000, 20
    boxes, scores, valid = _scene(1, n, k, extent=5000.0)
    valid[:] = True
    boxes[0, :400] = torch.tensor([10.0, 10.0, 60.0, 60.0])
    sizes = _record_nms_inputs(monkeypatch)
    got_boxes, got_valid = nms_top_n(boxes, valid, iou_threshold=0.7, top_n=top_n)
    assert sizes[:3] == [40, 0, 0] and sizes[3] <= 600 - 400 and sizes[-1] == 40
    want_boxes, want_valid = _full_nms(boxes, scores, valid, 0.7, top_n)
    assert torch.equal(got_boxes, want_boxes) and torch.equal(got_valid, want_valid)
    assert bool(got_valid.all())


@pytest.mark.parametrize("top_n", [1, 2, 5])
def test_small_top_n_all_invalid_and_no_images_on_the_chunked_path(top_n):
    boxes, scores, valid = _scene(5, 2, 60)
    valid[1] = False  # image 1: nothing takes part
    got = nms_top_n(boxes, valid, iou_threshold=0.5, top_n=top_n)
    want = _full_nms(boxes, scores, valid, 0.5, top_n)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not bool(got[1][1].any())
    empty = nms_top_n(boxes[:0], valid[:0], iou_threshold=0.5, top_n=top_n)
    assert empty[0].shape == (0, top_n, 4)


def test_iou_exactly_at_the_threshold_is_not_suppressed_as_in_nms():
    # float32(0.3) > 0.3: an IoU of exactly float32(0.3) is above the double threshold, so NMS
    # suppresses it; the chunks' overlap test must agree. Box 12 (IoU 30/100 with box 0) comes in
    # the second chunk, after copies of box 0.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] + [[100.0 + 20 * i, 0.0, 110.0 + 20 * i, 10.0] for i in range(1, 40)])
    boxes[1:12] = boxes[0]  # copies: the first chunk (10 boxes) leaves one survivor
    boxes[12] = torch.tensor([0.0, 0.0, 10.0, 3.0])
    valid = torch.ones(1, 40, dtype=torch.bool)
    got = nms_top_n(boxes[None], valid, iou_threshold=0.3, top_n=5)
    assert not any(torch.equal(b, boxes[12]) for b in got[0][0][got[1][0]])
    scores = -torch.arange(40.0)[None]
    want = _full_nms(boxes[None], scores, valid, 0.3, 5)
    assert torch.equal(got[0], want[0])


@pytest.mark.parametrize("k", [0, 5])
def test_fewer_boxes_than_top_n_and_empty_batches(k):
    boxes, scores, valid = _scene(2, 2, k)
    got_boxes, got_valid = nms_top_n(boxes, valid, iou_threshold=0.7, top_n=10)
    assert got_boxes.shape == (2, 10, 4) and got_valid.shape == (2, 10)
    assert int(got_valid.sum()) <= int(valid.sum())
    empty = nms_top_n(torch.zeros(0, 50, 4), torch.zeros(0, 50, dtype=torch.bool),
                      iou_threshold=0.7, top_n=10)
    assert empty[0].shape == (0, 10, 4)


def _greedy(boxes: torch.Tensor, iou: float) -> list[int]:
    """Textbook greedy NMS visiting the boxes in the given order (the reference for ties)."""
    from torchvision.ops import box_iou
    overlap = box_iou(boxes, boxes)
    kept: list[int] = []
    for i in range(len(boxes)):
        if all(overlap[i, j] <= iou for j in kept):
            kept.append(i)
    return kept


def test_boxes_are_visited_in_the_given_order_whatever_the_chunk():
    # No scores: the given order decides (the RPN gives topk's order, so tied bf16 logits cannot
    # make the chunked walk and NMS over all boxes disagree).
    boxes, _, _ = _scene(3, 1, 400, extent=150.0)
    valid = torch.ones(1, 400, dtype=torch.bool)
    want = _greedy(boxes[0], 0.5)[:30]
    got_boxes, got_valid = nms_top_n(boxes, valid, iou_threshold=0.5, top_n=30)
    assert torch.equal(got_boxes[0][got_valid[0]], boxes[0, want])


def test_degenerate_boxes_are_treated_as_nms_treats_them():
    # Two zero-area boxes have IoU 0/0 = NaN; NMS's "IoU > t" test never suppresses on NaN. One
    # such box survives in the first chunk (boxes 0-5), the other comes in the second.
    big = [0.0, 0.0, 100.0, 100.0]
    boxes = torch.tensor([big] * 30)
    boxes[1] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    boxes[6] = torch.tensor([7.0, 7.0, 7.0, 7.0])
    valid = torch.ones(1, 30, dtype=torch.bool)
    got_boxes, got_valid = nms_top_n(boxes[None], valid, iou_threshold=0.5, top_n=3)
    assert got_valid[0].tolist() == [True, True, True]
    assert torch.equal(got_boxes[0], boxes[[0, 1, 6]])
