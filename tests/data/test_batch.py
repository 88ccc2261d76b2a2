"""ImageBatch.from_images: zero padding at bottom/right, size_divisible, kept image sizes."""
from __future__ import annotations

import pytest
import torch

from detkit.data.batch import ImageBatch


def _img(h: int, w: int, value: int) -> torch.Tensor:
    return torch.full((3, h, w), value, dtype=torch.uint8)


def test_pads_to_max_rounded_up_and_keeps_sizes():
    a, b = _img(50, 70, 7), _img(64, 40, 9)
    batch = ImageBatch.from_images([a, b], size_divisible=32)
    # max h = 64 (already a multiple of 32), max w = 70 -> 96.
    assert batch.tensor.shape == (2, 3, 64, 96)
    assert batch.tensor.dtype == torch.uint8
    assert batch.image_sizes == [(50, 70), (64, 40)]
    assert len(batch) == 2
    assert torch.equal(batch.tensor[0, :, :50, :70], a)
    assert torch.equal(batch.tensor[1, :, :64, :40], b)
    # Everything outside each image is zero padding (bottom and right only).
    assert batch.tensor[0, :, 50:, :].eq(0).all() and batch.tensor[0, :, :, 70:].eq(0).all()
    assert batch.tensor[1, :, :, 40:].eq(0).all()
    # The image area holds no zeros, so the padding count is exact.
    assert int(batch.tensor[0].ne(0).sum()) == 3 * 50 * 70


@pytest.mark.parametrize("div, expected", [(1, (33, 17)), (16, (48, 32)), (32, (64, 32)), (0, (33, 17))])
def test_size_divisible(div, expected):
    batch = ImageBatch.from_images([_img(33, 17, 1)], size_divisible=div)
    assert tuple(batch.tensor.shape[-2:]) == expected
    assert batch.image_sizes == [(33, 17)]


def test_exact_multiple_is_not_padded_further():
    batch = ImageBatch.from_images([_img(64, 96, 3), _img(32, 32, 4)], size_divisible=32)
    assert tuple(batch.tensor.shape) == (2, 3, 64, 96)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="zero images"):
        ImageBatch.from_images([])
    with pytest.raises(ValueError, match="image 1"):
        ImageBatch.from_images([_img(4, 4, 1), torch.zeros(4, 4, dtype=torch.uint8)])


def test_to_keeps_sizes_and_values():
    batch = ImageBatch.from_images([_img(5, 6, 2)], size_divisible=4)
    moved = batch.to("cpu")
    assert moved.image_sizes == batch.image_sizes and torch.equal(moved.tensor, batch.tensor)
