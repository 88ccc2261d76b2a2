"""Where a number was measured: the machine, the library versions and the commit.

Every timing and result detkit writes (``metrics.json``, benchmark and comparison JSON) carries
``run_facts``, so a figure in the docs can say which machine, which command and which commit.
"""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

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


def run_facts(device: torch.device) -> dict[str, Any]:
    """``{"machine": ..., "git": ...}`` of this process (the context every timing needs). Where
    the checkout has no ``.git`` (a copied tree), ``DETKIT_COMMIT`` in the environment names it."""
    git = git_commit()
    if git.get("commit") is None and os.environ.get("DETKIT_COMMIT"):
        git = {"commit": os.environ["DETKIT_COMMIT"], "dirty": None, "source": "DETKIT_COMMIT"}
    return {"machine": machine_info(device), "git": git}
