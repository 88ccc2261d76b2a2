"""Train a detector: ``python tools/train.py method=faster_rcnn backbone=vgg16 data=voc07 data.root=...``.

A Hydra app over ``configs/train.yaml``; the logic is ``detkit.engine.run.train_from_config``.
The composed config is saved in ``<run_dir>/.hydra/`` and inside every checkpoint. Several
processes: ``torchrun --nproc_per_node=G tools/train.py ...`` (docs/training.md).
"""
from __future__ import annotations

import logging
import os
import sys


import hydra
import yaml
from omegaconf import DictConfig

from detkit.engine.config import CONFIG_DIR

log = logging.getLogger("detkit.train")


@hydra.main(config_path="../configs", config_name="train", version_base=None)
def hydra_app(cfg: DictConfig) -> None:
    from detkit.engine import distributed as ddp
    from detkit.engine.checkpoint import CheckpointError
    from detkit.engine.run import train_from_config
    from detkit.engine.trainer import NonFiniteLossError

    try:
        train_from_config(cfg)
    except (NonFiniteLossError, CheckpointError, ValueError, OSError) as e:  # RunDirError is a ValueError
        # Expected failures (bad data, bad config, NaN loss): one clear line, no traceback.
        log.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        ddp.cleanup()
        sys.exit(1)
    ddp.cleanup()


def _groups() -> tuple[str, ...]:
    """The config groups train.yaml's defaults list chooses (data, method, backbone, preset, speed),
    read from the file so that a new group needs no change here."""
    entries = yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())["defaults"]
    keys = (next(iter(e)) for e in entries if isinstance(e, dict))
    names = (k.removeprefix("optional ").split("@")[0] for k in keys)
    return tuple(n for n in names if "/" not in n)


GROUPS = _groups()


def unknown_key_message(overrides: list[str]) -> str | None:
    """The first plain ``key=value`` override whose key is not in the composed config, as a message
    listing the valid keys at that level (Hydra alone says only "Key ... is not in struct").

    Group choices (``backbone=x``), ``+``/``~`` overrides and ``hydra.*`` keys are left to Hydra,
    which lists the available options of an unknown group choice itself. Returns ``None`` when
    every key exists, or when the config does not compose (Hydra then reports why).
    """
    import difflib

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    pairs = [o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("-", "+", "~"))]
    keys = [k for k, _ in pairs if k not in GROUPS and "/" not in k and not k.startswith("hydra")]
    if not keys:
        return None
    configs = str(CONFIG_DIR)
    try:
        with initialize_config_dir(config_dir=os.path.abspath(configs), version_base=None):
            cfg = compose("train", overrides=[f"{k}={v}" for k, v in pairs if k in GROUPS])
    except Exception:  # noqa: BLE001 - any composition error is Hydra's to report
        return None
    tree = OmegaConf.to_container(cfg, resolve=False)
    for key in keys:
        node, path = tree, []
        for part in key.split("."):
            if not isinstance(node, dict):
                break  # a list index or a scalar: let Hydra judge
            if part not in node:
                where = ".".join(path) or "the top level"
                close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                hint = f" (did you mean {'.'.join([*path, close[0]])}?)" if close else ""
                return (f"unknown config key {key!r}{hint}; valid keys in {where}: {', '.join(map(str, node))}. "
                        f"To add a new key write +{key}=...")
            node, path = node[part], [*path, part]
    return None


def rank_zero_outputs(argv: list[str]) -> list[str]:
    """Under torchrun only rank 0 writes Hydra's files into the run folder (``.hydra/``,
    ``train.log``); the other ranks log to the console only."""
    if int(os.environ.get("RANK", "0")) > 0:
        return [*argv, "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    return argv


def run_dir_message(overrides: list[str]) -> str | None:
    """Why the run folder refuses this run (it holds a run and neither resume nor overwrite is set,
    or resume's config differs): checked before Hydra writes its files into the folder."""
    from detkit.engine.config import ConfigError, compose_run_config
    from detkit.engine.run_guard import RunDirError, guard_run_dir

    try:
        guard_run_dir(compose_run_config([o for o in overrides if not o.startswith("hydra")]))
    except ConfigError:
        return None  # Hydra reports it
    except RunDirError as e:
        return str(e)
    return None


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """``detkit train OVERRIDES...`` / ``tools/train.py OVERRIDES...``: Hydra's command line."""
    args = sys.argv[1:] if argv is None else list(argv)
    problem = unknown_key_message(args) or run_dir_message(args)
    if problem:  # before Hydra creates the run folder or any work starts
        print(f"error: {problem}", file=sys.stderr)
        return 1
    sys.argv = [prog or sys.argv[0], *rank_zero_outputs(args)]
    hydra_app()
    return 0


if __name__ == "__main__":
    sys.exit(main())
