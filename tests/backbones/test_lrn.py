"""detkit.backbones.lrn: the banded-convolution LRN computes torch's LocalResponseNorm."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.backbones.alexnet import alexnet_backbone
from detkit.backbones.googlenet import googlenet_backbone
from detkit.backbones.lrn import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, LocalResponseNorm, lrn_layer


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("channels", [1, 3, 8])
def test_equals_torch_for_odd_and_even_windows_and_few_channels(size, channels):
    gen = torch.Generator().manual_seed(size * 10 + channels)
    x = torch.randn(2, channels, 5, 6, generator=gen, dtype=torch.float64) * 3
    alpha, beta, k = 0.3, 0.6, 1.5  # large alpha: the window sum matters to the result
    ours = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)(x)
    torch.testing.assert_close(ours, F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k))


def test_gradients_equal_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 4, 5, generator=gen, dtype=torch.float64) * 2
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    w = torch.randn(2, 6, 4, 5, generator=gen, dtype=torch.float64)
    (LocalResponseNorm(5, alpha=0.2, beta=0.75, k=2.0)(a) * w).sum().backward()
    (nn.LocalResponseNorm(5, alpha=0.2, beta=0.75, k=2.0)(b) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_paper_formula_and_channels_last():
    """b[c] = a[c] / (k + 1e-4 * sum of a^2 over channels c-2..c+2) ^ 0.75, by a loop."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(1, 7, 3, 4, generator=gen) * 40).contiguous(memory_format=torch.channels_last)
    out = lrn_layer()(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    half = LRN_SIZE // 2
    for c in range(7):
        s = (x[:, max(0, c - half):c + half + 1] ** 2).sum(1)
        torch.testing.assert_close(out[:, c], x[:, c] / (LRN_K + LRN_ALPHA * s) ** LRN_BETA)


def test_other_ranks_fall_back_to_torch():
    x = torch.randn(2, 6, 9)
    torch.testing.assert_close(LocalResponseNorm(3)(x), F.local_response_norm(x, 3))


def test_bf16_close_to_float32():
    x = torch.randn(1, 16, 8, 8) * 20
    ref = lrn_layer()(x)
    torch.testing.assert_close(lrn_layer()(x.bfloat16()).float(), ref, atol=0.05, rtol=0.02)


def test_backbones_use_it_and_trace():
    trunk = alexnet_backbone(width=0.125).trunk
    assert any(isinstance(m, LocalResponseNorm) for m in trunk.modules())
    assert not any(type(m) is nn.LocalResponseNorm for m in trunk.modules())
    assert any(isinstance(m, LocalResponseNorm) for m in googlenet_backbone(width=0.25).trunk.modules())
    x = torch.randn(1, 3, 64, 64)
    traced = torch.jit.trace(trunk.eval(), x)  # what detkit export does
    y = torch.randn(1, 3, 96, 80)
    torch.testing.assert_close(traced(y), trunk(y))
