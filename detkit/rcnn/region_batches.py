"""Batches of R-CNN's warped regions, sized to a memory budget.

R-CNN runs its whole network on every warped region (R-CNN §2.2: ~2000 per image), so at test
time and when extracting features for the SVMs the regions go through the network in batches.
How many fit depends on the network far more than on anything else: a warped region of a
half-width AlexNet-BN holds 1.8 MB at the peak of a forward pass, one of VGG-16 25 MB (its first
two convolutions keep two 64 x 224 x 224 maps alive). A fixed count per batch is either
slow on a small network or out of memory on a large one, so the count comes from the network
itself: one region is run through it once, and the largest memory any layer holds at a time is
measured (``peak_bytes_per_region``); a budget in MB then gives the batch (``regions_per_batch``).
Batches run across image boundaries (``region_spans``), so images with few proposals still fill
a batch.

The default budget depends on the device (``default_memory_mb``). On a CPU small batches are
not slower: measured on a 2-core AMD EPYC (docs/performance.md, "R-CNN on the CPU"), a half-width
AlexNet-BN took 18-19 ms per region in batches of 16-35 and 22-23 ms in batches of 64-1024 (a
small batch's activations stay in cache); VGG-16's time moved by under 10 % between batches of 2
and 64 while its memory grew by 2.2 GB. A GPU needs large batches to be busy. The process's real
peak is up to about twice the estimate (the convolution library's layout copies and workspaces).

PyTorch has no per-layer memory estimate for CPU tensors (``torch.cuda.max_memory_allocated``
exists only for CUDA, and the allocator differs between devices), hence the forward hooks here.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def _tensors(x) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _storage_bytes(tensors: Sequence[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (an in-place ReLU's input and output are one)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


@torch.no_grad()
def peak_bytes_per_region(network: nn.Module, *, input_size: int, channels: int = 3,
                          device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> int:
    """Memory one warped region holds at the peak of an inference pass through ``network``.

    ``network`` runs once, in eval mode and without autograd, on one ``(1, channels, S, S)`` zero
    region (``S = input_size``); every part's train/eval mode is restored after. The peak is the network input (held by
    the caller through the pass) plus the largest input + output of any single layer (leaf module),
    counted by distinct storage. Autocast (bf16) would halve it, so float32 is the safe figure.

    Returns:
        bytes per region (> 0).
    """
    x = torch.zeros(1, channels, input_size, input_size, device=device, dtype=dtype)
    peak = [0]

    def hook(module, inputs, output):
        peak[0] = max(peak[0], _storage_bytes(_tensors(inputs) + _tensors(output)))

    modes = {m: m.training for m in network.modules()}  # each part's own mode, restored after
    leaves = [m for m in modes if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        network.eval()
        with torch.autocast(torch.device(device).type, enabled=False):  # the float32 figure, also under autocast
            network(x)
    finally:
        for m, training in modes.items():
            m.training = training
        for h in handles:
            h.remove()
    return _storage_bytes([x]) + peak[0]


CPU_MEMORY_MB = 64.0     # small batches are faster on a CPU (module docstring)
GPU_MEMORY_MB = 2048.0   # large enough to keep a GPU busy, small enough for an 8 GB card with VGG-16


def default_memory_mb(device: torch.device | str) -> float:
    """The default budget of one batch of warped regions on ``device``, in MB (module docstring)."""
    return CPU_MEMORY_MB if torch.device(device).type == "cpu" else GPU_MEMORY_MB


def regions_per_batch(bytes_per_region: int, memory_mb: float) -> int:
    """How many regions of ``bytes_per_region`` fit in ``memory_mb`` MB (at least one)."""
    if memory_mb <= 0:
        raise ValueError(f"regions_per_batch: memory_mb must be > 0, got {memory_mb}")
    if bytes_per_region <= 0:
        raise ValueError(f"regions_per_batch: bytes_per_region must be > 0, got {bytes_per_region}")
    return max(1, int(memory_mb * 2 ** 20 // bytes_per_region))


def region_spans(counts: Sequence[int], batch: int) -> Iterator[list[tuple[int, int, int]]]:
    """Split the regions of several images into batches of at most ``batch``, in order.

    Args:
        counts: regions per image ``P_i``; the regions are numbered image by image.
        batch: regions per batch (>= 1).

    Yields:
        per batch, ``(image, start, end)`` slices of each image's regions it holds, image order;
        every image with regions appears in one or more consecutive batches, and only full
        batches precede the last.
    """
    if batch < 1:
        raise ValueError(f"region_spans: batch must be >= 1, got {batch}")
    spans: list[tuple[int, int, int]] = []
    room = batch
    for image, count in enumerate(counts):
        start = 0
        while start < count:
            end = min(count, start + room)
            spans.append((image, start, end))
            room -= end - start
            start = end
            if room == 0:
                yield spans
                spans, room = [], batch
    if spans:
        yield spans
