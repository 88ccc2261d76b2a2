"""Mixed precision: the ``amp`` setting of training, evaluation and inference.

``amp`` is ``"none"`` (float32), ``"bf16"``, ``"fp16"`` or ``"auto"``. ``"auto"`` means bf16 where
it is faster: on a GPU, where the GPU supports bf16; on a CPU, where oneDNN has bf16 kernels
(AVX512-BF16 or AMX) **and** a short timing on this machine finds bf16 faster. The flag alone is
not enough: on an AMD EPYC with AVX512-BF16 bf16 steps are about 1.8x faster than float32, on an
Intel Xeon virtual machine with AVX512-BF16 but no AMX they are 1.5x slower. The timing (one
training step of a small conv net in each precision, about one second) runs once per process
and thread count.
"""
from __future__ import annotations

import functools
import logging
import time

import torch
from torch import nn

AMP_CHOICES = ("none", "bf16", "fp16", "auto")
CONCRETE_AMP = ("none", "bf16", "fp16")  # what a run trains and tests in ("auto" becomes one of these)
BF16_MIN_SPEEDUP = 1.1  # bf16 rounds activations: take it only where it clearly pays

log = logging.getLogger("detkit.precision")


def native_bf16(device: torch.device) -> bool:
    """The device has bf16 kernels: a CUDA GPU that supports bf16, or a CPU where oneDNN reports
    bf16 support (AVX512-BF16 / AMX; elsewhere bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(check()) if check is not None else False
        except RuntimeError:
            return False
    return False


def time_cpu_bf16(*, repeats: int = 4) -> tuple[float, float]:
    """Seconds for one training step (forward and backward) of a small detector-like net on the
    CPU, ``(float32, bf16 autocast)``, each the best of ``repeats`` after a warm-up, interleaved so
    that load on a shared machine hits both alike.

    The net is conv-BN-ReLU (3->64) and conv-BN-ReLU (64->128) on a batch of two 60x80 images, a
    6x6 max pool and two fc layers (4608->512->16): the layer kinds whose bf16 kernels decide a
    detector's speed. The global random state is left as it was (the run's seeds stay exact).
    """
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.AdaptiveMaxPool2d(6), nn.Flatten(), nn.Linear(128 * 36, 512), nn.ReLU(), nn.Linear(512, 16))
        x = torch.randn(2, 3, 60, 80)

        def step(bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x).float().sum().backward()
            return time.perf_counter() - start

        step(False), step(True)  # warm-up: oneDNN builds its kernels on the first call
        best = [float("inf"), float("inf")]
        for _ in range(repeats):
            for i, bf16 in enumerate((False, True)):
                best[i] = min(best[i], step(bf16))
    return best[0], best[1]


@functools.lru_cache(maxsize=None)
def cpu_bf16_speedup(num_threads: int) -> float:
    """float32 time / bf16 time of :func:`time_cpu_bf16` at ``num_threads`` threads (cached: the
    answer belongs to the machine, not the model)."""
    fp32_s, bf16_s = time_cpu_bf16()
    speedup = fp32_s / bf16_s
    log.info("amp=auto: one training step of a small conv net took %.1f ms in float32 and %.1f ms in "
             "bf16 on this CPU (threads: %d): bf16 %.2fx", fp32_s * 1e3, bf16_s * 1e3, num_threads, speedup)
    return speedup


def auto_choice(device: torch.device) -> tuple[str, str]:
    """What ``amp="auto"`` becomes on ``device``, and why: ``("bf16" | "none", reason)``."""
    device = torch.device(device)
    if not native_bf16(device):
        return "none", f"no native bf16 on {device.type}"
    if device.type != "cpu":
        return "bf16", f"native bf16 on {device.type}"
    speedup = cpu_bf16_speedup(torch.get_num_threads())
    if speedup >= BF16_MIN_SPEEDUP:
        return "bf16", f"bf16 measured {speedup:.2f}x faster than float32 on this CPU"
    return "none", (f"bf16 measured {1 / speedup:.2f}x slower than float32 on this CPU" if speedup < 1
                    else f"bf16 measured only {speedup:.2f}x faster than float32 on this CPU")


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` with ``"auto"`` made concrete (:func:`auto_choice`): ``"bf16"`` or ``"none"``."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(map(repr, AMP_CHOICES))}, got {amp!r}")
    if amp == "auto":
        return auto_choice(device)[0]
    return amp


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"none", "bf16", "fp16", "auto"} (:func:`resolve_amp`)."""
    amp = resolve_amp(amp, device)
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp != "none")
