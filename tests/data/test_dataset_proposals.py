"""DetectionDataset(..., proposals=...): proposals resized and flipped exactly like the boxes."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.data.dataset import DetectionDataset, collate_detections
from detkit.data.problems import DataError
from detkit.data.record import DetectionData, Record
from detkit.data.transforms import build_transforms

GT = [[4, 8, 20, 30], [30, 10, 60, 40]]


def _write(path: Path, h: int, w: int) -> str:
    cv2.imwrite(str(path), np.full((h, w, 3), 90, np.uint8))
    return str(path)


@pytest.fixture
def data(tmp_path) -> DetectionData:
    recs = [
        Record(3, _write(tmp_path / "a.png", 48, 64), 64, 48, boxes=GT, labels=[1, 0], difficult=[False, True]),
        Record(7, _write(tmp_path / "b.png", 40, 40), 40, 40, boxes=[[5, 5, 25, 35]], labels=[0]),
    ]
    return DetectionData(recs, ["cat", "dog"], name="tiny")


PROPS = np.array([
    [0, 0, 64, 48],        # the whole image
    [10, 5, 30, 25],
    [62, 0, 70, 10],       # crosses the right border: clipped to [62, 0, 64, 10]
    [63.8, 5, 64, 6],      # 0.2 x 1 px: 0.4 x 2 px after the x2 resize, under 1 px: dropped
    [70, 0, 80, 10],       # wholly outside: dropped
], dtype=np.float32)


def test_resize_and_flip_by_hand(data):
    # h=48 -> short side 96: scale 2, image 96 x 128; the flip maps x -> 128 - x.
    tf = build_transforms(train=True, min_size=96, max_size=1000, hflip_prob=1.0, color_jitter=None, seed=0)
    image, t = DetectionDataset(data, tf, proposals={3: PROPS})[0]
    assert tuple(image.shape) == (3, 96, 128) and t["size"] == (96, 128)
    assert torch.equal(t["boxes"], torch.tensor([[88, 16, 120, 60], [8, 20, 68, 80]], dtype=torch.float32))
    assert t["labels"].tolist() == [1, 0] and t["difficult"].tolist() == [False, True]
    assert t["proposals"].dtype == torch.float32
    torch.testing.assert_close(t["proposals"], torch.tensor([[0, 0, 128, 96], [68, 10, 108, 50], [0, 0, 4, 20]],
                                                            dtype=torch.float32))


def test_test_resize_matches_independent_scaling(data):
    # Test transform, short side 72: scale 1.5, (48, 64) -> (72, 96); no flip.
    tf = build_transforms(train=False, min_size=72, max_size=1000)
    _, t = DetectionDataset(data, tf, proposals={3: PROPS[:3]})[0]
    expected = np.clip(PROPS[:3], 0, [64, 48, 64, 48]) * 1.5
    np.testing.assert_allclose(t["proposals"].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(t["boxes"].numpy(), np.array(GT) * 1.5, atol=1e-4)


def test_random_scale_and_flip_move_proposals_with_boxes(data):
    # A proposal equal to a ground-truth box must come out equal to it, whatever scale/flip is drawn.
    tf = build_transforms(train=True, min_size=(40, 64, 96), max_size=1000, hflip_prob=0.5, color_jitter=None)
    ds = DetectionDataset(data, tf, proposals={3: np.array(GT[::-1], np.float32)})
    sizes, flips = set(), set()
    for seed in range(12):
        tf.compose.set_random_seed(seed)
        _, t = ds[0]
        torch.testing.assert_close(t["proposals"], t["boxes"].flip(0))
        sizes.add(t["size"])
        flips.add(bool(t["boxes"][0, 0] > t["size"][1] / 2))  # the left-side first box moved right: flipped
    assert len(sizes) > 1 and len(flips) == 2  # both draws were really exercised


def test_empty_and_missing_proposals(data):
    tf = build_transforms(train=False, min_size=72, max_size=1000)
    ds = DetectionDataset(data, tf, proposals={3: np.zeros((0, 4), np.float32)})  # image 7 not in the dict
    for i in range(2):
        _, t = ds[i]
        assert t["proposals"].shape == (0, 4) and t["proposals"].dtype == torch.float32
        assert len(t["boxes"]) == len(data.records[i].boxes)  # ground truth untouched
    batch, targets = collate_detections([ds[0], ds[1]])
    assert [tuple(t["proposals"].shape) for t in targets] == [(0, 4), (0, 4)]
    assert "proposals" not in DetectionDataset(data, tf)[0][1]


def test_without_transforms_proposals_stay_in_file_pixels(data):
    _, t = DetectionDataset(data, proposals={3: PROPS[:2]})[0]
    assert torch.equal(t["proposals"], torch.from_numpy(PROPS[:2]))


def test_bad_proposals_are_clear_errors(data):
    with pytest.raises(DataError, match=r"image_id 3.*\(P, 4\)"):
        DetectionDataset(data, proposals={3: np.zeros((2, 5))})[0]
    with pytest.raises(TypeError, match="proposals must be a dict"):
        DetectionDataset(data, proposals=[PROPS])
