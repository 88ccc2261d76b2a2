"""Train ``tests/engine/tiny_detector.py`` through ``detkit.engine.trainer.Trainer``; run alone or with torchrun.

    python tests/reliability/ddp_tiny.py DATA RUN_DIR OUT_DIR --batch-size 2 --iters 6
    torchrun --standalone --nproc_per_node=2 tests/reliability/ddp_tiny.py DATA RUN_DIR OUT_DIR --batch-size 1 --iters 6

The tiny detector has no random sampling and no dropout (``dropout=0``), every image is 64x64 (so
padding never differs between a batch of 2 and two batches of 1) and has objects, and its loss is
a mean over the images of the batch: one process with batch 2 and two processes with batch 1 each
(DDP averages the gradients) then take the same optimiser steps, up to float rounding. Each rank
writes ``OUT_DIR/rank<r>.json``: the dataset indices it loaded, per step, and the world size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "engine"))

from tiny_detector import TinyDetector  # noqa: E402

from detkit.data.dataset import DetectionDataset  # noqa: E402
from detkit.data.transforms import build_transforms  # noqa: E402
from detkit.data.voc import load_voc  # noqa: E402
from detkit.engine import distributed as ddp  # noqa: E402
from detkit.engine.trainer import Trainer  # noqa: E402


class RecordingDataset(DetectionDataset):
    """Remembers which indices this process loaded (the DDP shard it trained on)."""

    seen: list[int] = []

    def __getitem__(self, index):
        type(self).seen.append(int(index))
        return super().__getitem__(index)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--iters", type=int, default=6)
    a = p.parse_args()
    torch.use_deterministic_algorithms(True)
    data = load_voc(a.data, "trainval", keep_empty=False)
    ds = RecordingDataset(data, build_transforms(train=True, min_size=64, max_size=64))
    torch.manual_seed(0)  # identical initial weights on every rank and in the 1-process run
    trainer = Trainer(model=TinyDetector(num_classes=data.num_classes, dropout=0.0), train_dataset=ds,
                      run_dir=a.run_dir, max_iters=a.iters, batch_size=a.batch_size, lr=0.05, warmup_iters=0,
                      device="cpu", seed=0, progress=False, tensorboard=True, size_divisible=16,
                      checkpoint_every=2, log_every=1, class_names=data.class_names)
    trainer.fit()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ddp.get_rank()}.json").write_text(json.dumps(
        {"world_size": ddp.get_world_size(), "seen": RecordingDataset.seen,
         "losses": [h["loss"] for h in trainer.history]}))
    ddp.cleanup()


if __name__ == "__main__":
    main()
