"""Train a detector: ``python tools/train.py method=faster_rcnn backbone=vgg16 data=voc07 data.root=...``.

A Hydra app over ``configs/train.yaml``; the logic is ``detkit.engine.trainer.train_from_config``.
The composed config is saved in ``<run_dir>/.hydra/`` and inside every checkpoint. Several
processes: ``torchrun --nproc_per_node=G tools/train.py ...`` (docs/training.md).
"""
from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

log = logging.getLogger("detkit.train")


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    from detkit.engine import distributed as ddp
    from detkit.engine.checkpoint import CheckpointError
    from detkit.engine.trainer import NonFiniteLossError, train_from_config

    try:
        train_from_config(cfg)
    except (NonFiniteLossError, CheckpointError, ValueError, OSError) as e:
        # Expected failures (bad data, bad config, NaN loss): one clear line, no traceback.
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        ddp.cleanup()
        sys.exit(1)
    ddp.cleanup()


if __name__ == "__main__":
    main()
