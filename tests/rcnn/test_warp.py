import cv2
import numpy as np
import pytest
import torch

from detkit.rcnn.warp import dilate_boxes, warp_regions


def _image(h=40, w=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 2 - 1  # "normalised": mean 0 = outside the image


def _reference(img: torch.Tensor, box, size: int) -> np.ndarray:
    """R-CNN by hand: integer crop of a mean(=0)-padded canvas, cv2.resize INTER_LINEAR."""
    x1, y1, x2, y2 = (int(v) for v in box)
    h, w = img.shape[1:]
    pad = 64
    canvas = np.zeros((h + 2 * pad, w + 2 * pad, 3), np.float32)
    canvas[pad:pad + h, pad:pad + w] = img.permute(1, 2, 0).numpy()
    crop = canvas[y1 + pad:y2 + pad, x1 + pad:x2 + pad]
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return out.transpose(2, 0, 1)


def _interior(box, size: int) -> np.ndarray:
    """Output pixels whose bilinear stencil lies inside the crop: there cv2.resize (which
    replicates the crop's edge) and roi_align (which sees the real neighbours) must agree."""
    x1, y1, x2, y2 = box
    j = np.arange(size) + 0.5
    ux = j * (x2 - x1) / size - 0.5
    uy = j * (y2 - y1) / size - 0.5
    okx = (ux >= 0) & (ux <= x2 - x1 - 1)
    oky = (uy >= 0) & (uy <= y2 - y1 - 1)
    return oky[:, None] & okx[None, :]


@pytest.mark.parametrize("box", [(5, 7, 30, 25), (0, 0, 50, 40), (12, 3, 20, 38)])
def test_tight_warp_matches_cv2_resize(box):
    img = _image()
    out = warp_regions(img[None], [torch.tensor([box], dtype=torch.float32)], output_size=56, context=0)
    assert out.shape == (1, 3, 56, 56)
    ref = _reference(img, box, 56)
    m = _interior(box, 56)
    assert m.mean() > 0.75
    np.testing.assert_allclose(out[0].numpy()[:, m], ref[:, m], atol=1e-5)


def test_shrinking_averages_like_inter_area():
    # A 96-px box warped to 32 (factor 3): the adaptive sampling grid takes 3 x 3 samples per
    # output pixel, landing on pixel centres, i.e. the box filter of cv2's INTER_AREA exactly.
    img = _image(96, 96, 3)
    out = warp_regions(img[None], [torch.tensor([[0.0, 0.0, 96.0, 96.0]])], output_size=32, context=0)
    ref = cv2.resize(img.permute(1, 2, 0).numpy(), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(out[0].numpy(), ref.transpose(2, 0, 1), atol=1e-5)


def test_context_16_matches_hand_dilated_box():
    # S = 64, p = 16: scale 64 / 32 = 2. Box (15, 10)-(35, 22), 20 x 12 -> grows by 10 and 6 a side.
    box = torch.tensor([[15.0, 10.0, 35.0, 22.0]])
    hand = (5, 4, 45, 28)
    assert dilate_boxes(box, output_size=64, context=16)[0].tolist() == list(map(float, hand))
    img = _image()
    out = warp_regions(img[None], [box], output_size=64, context=16)
    ref = _reference(img, hand, 64)
    m = _interior(hand, 64)
    np.testing.assert_allclose(out[0].numpy()[:, m], ref[:, m], atol=1e-5)
    # The original box lands on warped pixels 16..47: exactly 16 px of context each side.
    tight = warp_regions(img[None], [torch.tensor([[5.0, 4.0, 45.0, 28.0]])], output_size=64, context=0)
    torch.testing.assert_close(out, tight)


def test_box_partly_outside_is_mean_filled():
    # Dilated box (-20, -10)-(20, 30) on a 40 x 50 image: left half / top quarter outside.
    img = _image()
    hand = (-20, -10, 20, 30)
    box = torch.tensor([[-10.0, 0.0, 10.0, 20.0]])  # dilated x2 about its centre by S/(S-2p)=2
    out = warp_regions(img[None], [box], output_size=64, context=16)[0].numpy()
    ref = _reference(img, hand, 64)
    m = _interior(hand, 64)
    np.testing.assert_allclose(out[:, m], ref[:, m], atol=1e-5)
    # Warped pixels that sample more than a pixel left of / above the image are exactly the mean.
    assert np.all(out[:, :, :30] == 0) and np.all(out[:, :14, :] == 0)
    assert np.abs(out[:, 20:, 40:]).min() > 0  # inside the image: image values, not the fill


def test_shapes_several_images_and_padded_batch():
    a, b = _image(40, 50, 1), _image(30, 20, 2)
    batch = torch.zeros(2, 3, 40, 50)
    batch[0] = a
    batch[1, :, :30, :20] = b + 5.0  # the padding area must not leak in, whatever it holds
    batch[1, :, 30:, :] = 7.0
    batch[1, :, :, 20:] = 7.0
    boxes = [torch.tensor([[1.0, 2.0, 30.0, 33.0], [0.0, 0.0, 50.0, 40.0], [4.0, 4.0, 9.0, 9.0]]),
             torch.tensor([[2.0, 3.0, 18.0, 28.0], [10.0, 10.0, 40.0, 40.0]])]
    out = warp_regions(batch, boxes, output_size=32, context=4, image_sizes=[(40, 50), (30, 20)])
    assert out.shape == (5, 3, 32, 32)
    alone = warp_regions((b + 5.0)[None], boxes[1:], output_size=32, context=4)
    torch.testing.assert_close(out[3:], alone)
    first = warp_regions(a[None], boxes[:1], output_size=32, context=4)
    torch.testing.assert_close(out[:3], first)
    assert warp_regions(a[None], [torch.zeros(0, 4)], output_size=32, context=4).shape == (0, 3, 32, 32)


def test_bad_input():
    with pytest.raises(ValueError, match="^warp_regions: "):
        warp_regions(torch.zeros(1, 3, 8, 8), [], output_size=32)
    with pytest.raises(ValueError, match="^warp_regions: "):
        warp_regions(torch.zeros(1, 3, 8, 8), [torch.zeros(0, 4)], output_size=32, context=16)
    with pytest.raises(ValueError, match="^warp_regions: "):
        warp_regions(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [torch.zeros(2, 4)], output_size=32)
