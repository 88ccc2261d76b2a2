"""DetectionDataset targets and collate_detections padding."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.data.batch import ImageBatch
from detkit.data.dataset import DetectionDataset, collate_detections
from detkit.data.images import ImageReadError
from detkit.data.problems import DataError
from detkit.data.record import DetectionData, Record
from detkit.data.transforms import build_transforms


def _write(path: Path, h: int, w: int) -> str:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 200  # BGR on disk: red channel
    img[: h // 2, : w // 2, 0] = 100  # a blue-ish top-left quadrant
    cv2.imwrite(str(path), img)  # PNG: lossless, so pixel values can be checked exactly
    return str(path)


@pytest.fixture
def data(tmp_path) -> DetectionData:
    recs = [
        Record(0, _write(tmp_path / "a.png", 48, 64), 64, 48,
               boxes=[[4, 8, 20, 30], [30, 10, 60, 40]], labels=[1, 0], difficult=[False, True]),
        Record(5, _write(tmp_path / "b.png", 80, 40), 40, 80,
               boxes=[[0, 0, 40, 80]], labels=[1], iscrowd=[True]),
        Record(9, _write(tmp_path / "c.png", 30, 30), 30, 30),  # no objects
    ]
    return DetectionData(recs, ["cat", "dog"], name="tiny")


def test_target_keys_dtypes_shapes_without_transforms(data):
    ds = DetectionDataset(data)
    assert len(ds) == 3
    image, target = ds[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    # RGB order: the file's red channel (BGR index 2) is channel 0 here.
    assert int(image[0, 40, 60]) == 200 and int(image[2, 0, 0]) == 100 and int(image[2, 40, 60]) == 0
    assert set(target) == {"boxes", "labels", "difficult", "iscrowd", "image_id", "orig_size", "size"}
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 0]
    assert target["difficult"].dtype == torch.bool and target["difficult"].tolist() == [False, True]
    assert target["iscrowd"].dtype == torch.bool and target["iscrowd"].tolist() == [False, False]
    assert target["image_id"] == 0 and isinstance(target["image_id"], int)
    assert target["orig_size"] == (48, 64) and target["size"] == (48, 64)
    assert torch.equal(target["boxes"], torch.tensor([[4, 8, 20, 30], [30, 10, 60, 40]], dtype=torch.float32))
    target["boxes"] += 1  # targets are copies: the record must not change
    assert data.records[0].boxes[0, 0] == 4
    image[:] = 0  # and the image tensor is writable
    _, target = ds[1]
    assert target["image_id"] == 5 and target["iscrowd"].tolist() == [True]


def test_empty_image_has_empty_targets(data):
    image, target = DetectionDataset(data, build_transforms(train=True, min_size=60, seed=0))[2]
    assert image.shape == (3, 60, 60)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["difficult"].shape == (0,) and target["iscrowd"].dtype == torch.bool


def test_transforms_resize_boxes_and_report_sizes(data):
    # min_size 96 on a 48x64 image: scale 2 -> 96x128; the 40x80 portrait image: scale 2.4 -> 192x96.
    ds = DetectionDataset(data, build_transforms(train=False, min_size=96, max_size=200))
    image, target = ds[0]
    assert image.shape == (3, 96, 128)
    assert target["orig_size"] == (48, 64) and target["size"] == (96, 128)
    np.testing.assert_allclose(target["boxes"].numpy(), [[8, 16, 40, 60], [60, 20, 120, 80]], rtol=1e-5)
    assert target["difficult"].tolist() == [False, True]  # flags follow their boxes
    image, target = ds[1]
    assert target["orig_size"] == (80, 40) and target["size"] == (192, 96) == tuple(image.shape[1:])


def test_aspect_ratios_come_from_records_without_reading(tmp_path):
    recs = [Record(0, str(tmp_path / "missing1.jpg"), 200, 100),
            Record(1, str(tmp_path / "missing2.jpg"), 50, 100)]
    ds = DetectionDataset(DetectionData(recs, ["x"]))
    assert ds.aspect_ratios() == [2.0, 0.5]


def test_unreadable_image_names_file_and_index(data, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    data.records.append(Record(11, str(bad), 10, 10))
    with pytest.raises(ImageReadError) as info:
        DetectionDataset(data)[3]
    msg = str(info.value)
    assert "broken.jpg" in msg and "sample 3" in msg and "image_id 11" in msg
    assert isinstance(info.value, OSError)


def test_size_mismatch_with_record_is_a_data_error(data):
    data.records[0].width = 65  # file is 64 wide
    with pytest.raises(DataError, match="a.png.*65x48"):
        DetectionDataset(data)[0]


def test_collate_pads_and_keeps_image_sizes(data):
    ds = DetectionDataset(data)
    samples = [ds[0], ds[1]]  # (3, 48, 64) and (3, 80, 40)
    batch, targets = collate_detections(samples, size_divisible=32)
    assert isinstance(batch, ImageBatch)
    assert tuple(batch.tensor.shape) == (2, 3, 96, 64)  # max (80, 64) rounded up to 32
    assert batch.image_sizes == [(48, 64), (80, 40)] == [t["size"] for t in targets]
    assert torch.equal(batch.tensor[1, :, :80, :40], samples[1][0])
    assert batch.tensor[1, :, 80:].eq(0).all() and batch.tensor[1, :, :, 40:].eq(0).all()
    assert targets[0] is samples[0][1]
    with pytest.raises(ValueError, match="empty"):
        collate_detections([])


def test_works_in_a_dataloader_with_the_batch_sampler(data):
    from functools import partial

    from detkit.data.sampler import build_batch_sampler

    ds = DetectionDataset(data, build_transforms(train=True, min_size=32, max_size=64, seed=0))
    sampler = build_batch_sampler(ds, batch_size=2, shuffle=True, seed=0, group_by_aspect_ratio=True)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler,
                                         collate_fn=partial(collate_detections, size_divisible=16))
    seen = []
    for batch, targets in loader:
        assert batch.tensor.shape[-1] % 16 == 0 and batch.tensor.shape[-2] % 16 == 0
        seen += [t["image_id"] for t in targets]
    assert sorted(seen) == [0, 5, 9]


def test_dataloader_workers_draw_different_augmentations(tmp_path):
    # Forked workers share albumentations' RNG state unless reseeded per worker: with flip p=0.5
    # and one identical asymmetric image per index, identical streams would give each worker's
    # k-th sample the same flip.
    path = _write(tmp_path / "same.png", 20, 30)
    recs = [Record(i, path, 30, 20, boxes=[[0, 0, 5, 5]], labels=[0]) for i in range(32)]
    ds = DetectionDataset(DetectionData(recs, ["x"]),
                          build_transforms(train=True, min_size=20, color_jitter=None, seed=0))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_detections)
    flips = [bool(t[0]["boxes"][0, 0] > 10) for _, t in loader]
    worker0, worker1 = flips[0::2], flips[1::2]  # the loader alternates workers
    assert worker0 != worker1
    assert 4 <= sum(flips) <= 28


def test_real_bccd_images_follow_the_resize_rule(bccd_root):
    from detkit.data.voc import load_voc

    data = load_voc(bccd_root, "test")
    data.records = [r for r in data.records if r.num_objects][:2]
    ds = DetectionDataset(data, build_transforms(train=False))
    for k, rec in enumerate(data.records):
        image, target = ds[k]
        assert target["orig_size"] == (480, 640) and target["size"] == (600, 800)  # scale 1.25
        assert tuple(image.shape) == (3, 600, 800)
        assert len(target["boxes"]) == rec.num_objects  # no real box is sub-pixel
        np.testing.assert_allclose(target["boxes"].numpy(), rec.boxes * 1.25, rtol=1e-5)
