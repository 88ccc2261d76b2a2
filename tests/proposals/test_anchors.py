import math

import pytest
import torch

from detkit.proposals.anchors import AnchorGenerator


def test_count_is_cells_times_nine():
    gen = AnchorGenerator()
    assert gen.num_anchors == 9
    assert gen((5, 7)).shape == (5 * 7 * 9, 4)


def test_anchors_at_location_zero_by_hand():
    # Cell (0, 0) of a stride-16 map is centred at (8, 8). Ratio r = h / w, w = s / sqrt(r).
    a = AnchorGenerator(sizes=(128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), stride=16)((2, 3))
    half_long, half_short = 128 * math.sqrt(2) / 2, 128 / math.sqrt(2) / 2  # 90.51, 45.25
    expected_128 = torch.tensor([
        [8 - half_long, 8 - half_short, 8 + half_long, 8 + half_short],   # 1:2 -> wide
        [8 - 64, 8 - 64, 8 + 64, 8 + 64],                                 # 1:1
        [8 - half_short, 8 - half_long, 8 + half_short, 8 + half_long],   # 2:1 -> tall
    ])
    assert torch.allclose(a[:3], expected_128, atol=1e-4)
    assert torch.allclose(a[4], torch.tensor([8 - 128.0, 8 - 128, 8 + 128, 8 + 128]))  # 256, 1:1
    assert torch.allclose(a[7], torch.tensor([8 - 256.0, 8 - 256, 8 + 256, 8 + 256]))  # 512, 1:1


def test_areas_and_centres():
    gen = AnchorGenerator()
    a = gen((2, 3)).view(2, 3, 9, 4)
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    sizes = torch.tensor([128.0, 128, 128, 256, 256, 256, 512, 512, 512])
    assert torch.allclose(area, (sizes**2).expand_as(area), rtol=1e-5)
    # Index (i * Wf + j) * A + a: cell (1, 2) is centred at ((2 + .5) * 16, (1 + .5) * 16).
    centre = (a[1, 2, :, :2] + a[1, 2, :, 2:]) / 2
    assert torch.allclose(centre, torch.tensor([40.0, 24.0]).expand(9, 2))


def test_cached_per_size():
    gen = AnchorGenerator()
    assert gen((4, 4)) is gen((4, 4))
    assert gen((4, 5)).shape[0] == 4 * 5 * 9


def test_bad_arguments():
    with pytest.raises(ValueError, match="^AnchorGenerator: "):
        AnchorGenerator(sizes=(), aspect_ratios=(1.0,))
    with pytest.raises(ValueError, match="^AnchorGenerator: "):
        AnchorGenerator(sizes=(32,), aspect_ratios=(-1.0,))
