"""The memory side of a benchmark: peak memory (``torch.cuda.max_memory_allocated`` on a GPU; peak
resident set size on the CPU). The machine and commit: ``detkit.utils.provenance``.
"""
from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch


def reset_peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_memory_allocated"
    try:  # Linux: "5" resets VmHWM (peak RSS) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "rss_peak_since_reset"
    except OSError:
        return "rss_peak_of_process"


def _proc_status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (NaN where absent)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def current_memory_mb(device: torch.device) -> float:
    """Memory in use now: CUDA tensors allocated, or the process's resident set on the CPU."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _proc_status_mb("VmRSS")


def peak_memory_mb(device: torch.device, kind: str) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "rss_peak_since_reset":
        return _proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
