"""Local response normalisation (LRN), the AlexNet paper's "brightness normalisation" (§3.3).

    b[c] = a[c] / (k + alpha / n * sum_{c' within n/2 of c} a[c']^2) ^ beta

over ``n`` adjacent feature maps at each position: AlexNet and ZFNet after conv1 and conv2,
GoogLeNet after its first pool and conv3. :class:`LocalResponseNorm` computes what
``torch.nn.LocalResponseNorm`` computes (same arguments, same zero padding at the first and last
channels, equal up to float rounding; under CPU autocast the sum runs in the autocast dtype,
where torch's pooling runs in float32) but sums the window of squares with a banded 1x1
convolution, a channel-mixing matrix product oneDNN and cuDNN run as one GEMM. It is written by
hand because ``torch.nn.functional.local_response_norm`` sums the window by average-pooling a 5-D
view of the squares, which on a CPU took 4-5x as long (AlexNet-BN width 0.5 at 480x640, conv1's
LRN on ``(1, 48, 120, 160)``: 28 ms against 6 ms at one thread, forward and backward 74 against
19 ms); the LRNs were then most of that trunk's time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LRN_SIZE", "LRN_ALPHA", "LRN_BETA", "LRN_K", "LocalResponseNorm", "lrn_layer"]

# The paper's constants: k=2, n=5, alpha=1e-4, beta=0.75. torch divides alpha by n, so alpha=n*1e-4
# there gives the paper's formula.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0


class LocalResponseNorm(nn.LocalResponseNorm):
    """``torch.nn.LocalResponseNorm`` with the window sum as a 1x1 convolution (module docstring).

    Args (as torch's): size: ``n``, the number of adjacent channels summed (channel ``c`` sums
    ``c - n // 2 .. c + (n - 1) // 2``); alpha: the multiplier, divided by ``n``; beta: the
    exponent; k: the additive constant.

    Shapes: ``(N, C, H, W)`` -> ``(N, C, H, W)`` (any memory format; channels_last stays so).
    No parameters or buffers, so checkpoints of torch's module load unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:  # torch's module also takes 3-D and 5-D inputs; only 4-D is banded here
            return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)
        c = x.shape[1]
        # band[out, in] = 1 where in - out lies in [-(n // 2), (n - 1) // 2]: torch's window.
        band = torch.ones(c, c, dtype=x.dtype, device=x.device)
        band = band.triu(-(self.size // 2)).tril((self.size - 1) // 2)
        window = F.conv2d(x * x, band[:, :, None, None])
        return x * window.mul(self.alpha / self.size).add_(self.k).pow(-self.beta)


def lrn_layer() -> LocalResponseNorm:
    """The paper's local response normalisation across 5 adjacent feature maps."""
    return LocalResponseNorm(LRN_SIZE, alpha=LRN_SIZE * LRN_ALPHA, beta=LRN_BETA, k=LRN_K)
