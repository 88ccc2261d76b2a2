"""Shared helpers of the reliability tests: run tools/*.py as subprocesses on tiny CPU settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}

# Faster R-CNN on AlexNet at 1/8 width, 64-96 px images (as tests/cli/test_train_cli.py).
TINY = [
    "backbone=alexnet", "backbone.width=0.125", "data.transforms.min_size=64", "data.transforms.max_size=96",
    "method.model.anchor_sizes=[16,32,64]", "solver.warmup_iters=1", "solver.batch_size=2", "num_workers=0",
    "progress=false", "tensorboard=false", "test.enabled=false", "device=cpu",
]


def train_cmd(run_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [PY, "tools/train.py", f"run_dir={run_dir}", f"data.root={data_root}", *TINY, *extra]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def make_data(root: Path, num_images: int = 10, seed: int = 0, image_size=(64, 96)) -> Path:
    from detkit.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(root, num_images=num_images, image_size=image_size, object_size=(16, 40), seed=seed)
