"""Offset max pooling: s^2 x the locations, hand-checked values, interleaving to a dense map."""
import pytest
import torch
from torch import nn

from detkit.overfeat.offset_pool import interleave_offsets, offset_max_pool


def test_3x3_stride3_pool_gives_9x_locations_with_expected_values():
    x = torch.arange(81, dtype=torch.float32).view(1, 1, 9, 9)  # value = 9*row + col
    out = offset_max_pool(x, nn.MaxPool2d(3, 3), 3)
    assert out.shape == (9, 1, 3, 3)                       # 9 offsets x 9 locations = 81
    assert nn.MaxPool2d(3, 3)(x).numel() * 9 == out.numel()
    for dy in range(3):
        for dx in range(3):
            for i in range(3):
                for j in range(3):
                    # window rows 3i+dy .. 3i+dy+2 clipped to the map (the -inf pad never wins);
                    # the values grow with row and column, so the max is the bottom-right element
                    r, c = min(3 * i + dy + 2, 8), min(3 * j + dx + 2, 8)
                    assert out[dy * 3 + dx, 0, i, j] == 9 * r + c
    assert out[0, 0].tolist() == [[20, 23, 26], [47, 50, 53], [74, 77, 80]]  # offset (0,0): plain pool


def test_offsets_are_stacked_offset_major_over_the_batch():
    x = torch.randn(2, 3, 12, 12)
    out = offset_max_pool(x, nn.MaxPool2d(3, 3), 3)
    assert out.shape == (18, 3, 4, 4)
    for n in range(2):  # offset (1, 1) is o = 4: rows 4*N + n; its last window overhangs (-inf pad)
        torch.testing.assert_close(out[4 * 2 + n, :, :3, :3], nn.MaxPool2d(3, 3)(x[n:n + 1, :, 1:, 1:])[0])
        torch.testing.assert_close(out[4 * 2 + n, :, 3, 3], x[n, :, 10:, 10:].amax(dim=(1, 2)))


def test_interleave_builds_the_dense_map():
    s, n = 3, 2
    y = torch.randn(s * s * n, 4, 2, 5)
    dense = interleave_offsets(y, s)
    assert dense.shape == (n, 4, 6, 15)
    for dy in range(s):
        for dx in range(s):
            torch.testing.assert_close(dense[:, :, dy::s, dx::s], y[(dy * s + dx) * n:(dy * s + dx + 1) * n])


def test_offset_pool_then_interleave_equals_stride1_pool():
    # With a kxk/s pool, every offset's windows together are all the stride-1 windows.
    x = torch.randn(1, 2, 11, 11)
    dense = interleave_offsets(offset_max_pool(x, nn.MaxPool2d(2, 2), 2), 2)
    ref = nn.MaxPool2d(2, 1)(x)  # 10x10: positions 0..9
    torch.testing.assert_close(dense, ref)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="^offset_max_pool: "):
        offset_max_pool(torch.zeros(3, 4, 4), nn.MaxPool2d(2, 2), 2)
    with pytest.raises(ValueError, match="^interleave_offsets: "):
        interleave_offsets(torch.zeros(5, 1, 2, 2), 2)
