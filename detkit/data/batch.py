"""Padded image batches: the input every detkit detector takes.

Images of different sizes are zero-padded at the bottom and right to a common size (rounded up to
``size_divisible``), and each image's true size is kept so that anchors, proposals and boxes are
clipped to the real image, not the padding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


@dataclass
class ImageBatch:
    """Images padded to one tensor.

    Attributes:
        tensor: ``(N, 3, H_pad, W_pad)``, uint8 (0-255, RGB) from the data loader; detectors
            convert and normalise on the device.
        image_sizes: ``N`` pairs ``(h, w)``: each image's size before padding.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), list(self.image_sizes))

    def pin_memory(self) -> "ImageBatch":
        # Called by DataLoader(pin_memory=True) on custom batch types.
        return ImageBatch(self.tensor.pin_memory(), self.image_sizes)

    @classmethod
    def from_images(cls, images: Sequence[Tensor], size_divisible: int = 32) -> "ImageBatch":
        """Pad ``(3, h_i, w_i)`` tensors into one ``(N, 3, H, W)`` tensor (zeros at bottom/right)."""
        if len(images) == 0:
            raise ValueError("cannot batch zero images")
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got shape {tuple(im.shape)}")
        h = max(int(im.shape[1]) for im in images)
        w = max(int(im.shape[2]) for im in images)
        if size_divisible > 1:
            h = int(math.ceil(h / size_divisible) * size_divisible)
            w = int(math.ceil(w / size_divisible) * size_divisible)
        out = images[0].new_zeros((len(images), 3, h, w))
        for i, im in enumerate(images):
            out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
        return cls(out, [(int(im.shape[1]), int(im.shape[2])) for im in images])
