"""The machine and memory side of a benchmark: hardware/software description, git commit, and
peak memory (``torch.cuda.max_memory_allocated`` on a GPU; peak resident set size on the CPU).
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
from pathlib import Path

import torch

def machine_info(device: torch.device) -> dict:
    """CPU model, cores, threads, GPU name, library versions (the context of every number)."""
    import torchvision

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "device": str(device), "gpu": None, "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_commit(repo: str | os.PathLike | None = None) -> dict:
    """``{"commit", "dirty"}`` of the checkout (read-only git calls; ``None`` outside git)."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


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
