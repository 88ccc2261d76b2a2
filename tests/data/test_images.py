"""read_image / image_size: every mode becomes (H, W, 3) uint8 RGB; broken files give named errors."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.data._fixtures import jpeg_bytes, pixels, write_image
from detkit.data.images import ImageReadError, image_size, read_image
from detkit.data.problems import DataError


def test_rgb_png_exact(tmp_path):
    arr = pixels((7, 5))
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, arr)
    assert image_size(tmp_path / "a.png") == (7, 5)


def test_greyscale_becomes_three_equal_channels(tmp_path):
    grey = pixels((6, 4))[:, :, 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.jpg", quality=100)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_rgba_drops_alpha_without_compositing(tmp_path):
    rgba = np.concatenate([pixels((5, 3)), np.zeros((3, 5, 1), np.uint8)], axis=2)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[:, :, :3])


def test_la_and_palette_and_cmyk(tmp_path):
    la = np.stack([np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, np.full((3, 4), 7, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, np.repeat(la[:, :, :1], 3, axis=2))

    pal = Image.fromarray(pixels((8, 6))).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    assert read_image(tmp_path / "pt.png").shape == (6, 8, 3)

    Image.fromarray(pixels((8, 6))).convert("CMYK").save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "c.jpg"), expected)


def test_sixteen_bit_grey_scaled_over_full_range(tmp_path):
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    expected = np.rint(values.astype(float) * 255 / 65535).astype(np.uint8)  # 0, 1, 4, 128, 255
    assert out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[:, :, 1], expected)


def test_sixteen_bit_rgb_keeps_low_byte(tmp_path):
    rgb = np.array([[[1000, 40000, 65280], [0, 257, 65535]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[:, :, ::-1])  # OpenCV writes BGR
    out = read_image(tmp_path / "c16.png")
    expected = np.rint(rgb.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)  # PIL alone would give 1000 -> 3 (high byte), not 4


def test_exif_orientation_6_rotates_and_swaps_size(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # stored 40 wide, 20 high
    stored[:, :20] = (255, 0, 0)  # left half red
    stored[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert image_size(tmp_path / "r.jpg") == (20, 40)
    # After a clockwise quarter turn the stored left (red) half is on top.
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50


@pytest.mark.parametrize("flag", [False, True])
def test_truncated_jpeg_detected_even_with_pil_leniency(tmp_path, monkeypatch, flag):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
    path = write_image(tmp_path / "cut.jpg", "truncated")
    with pytest.raises(ImageReadError, match="cut.jpg.*truncated"):
        read_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag  # restored
    assert image_size(path) == (64, 48)  # the header is intact


def test_truncated_png_detected(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(pixels((32, 32))).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_text_file_named_jpg(tmp_path):
    path = write_image(tmp_path / "fake.jpg", "text")
    for fn in (read_image, image_size):
        with pytest.raises(ImageReadError, match="fake.jpg.*not an image") as info:
            fn(path)
        assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
        assert isinstance(info.value, OSError)
        assert info.value.file == str(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg.*not found"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="not a regular file"):
        image_size(tmp_path)


def test_jpeg_matches_pil_decode_in_rgb_order(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes((16, 8), quality=100))
    with Image.open(tmp_path / "a.jpg") as im:
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(tmp_path / "a.jpg"), expected)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.jpg", quality=100)
    out = read_image(tmp_path / "red.jpg")
    assert out[..., 0].min() > 240 and out[..., 2].max() < 15  # R first, not BGR
