"""Run configs composed in code, as ``tools/train.py``'s Hydra app composes them from its command line.

``compose_run_config(["data=bccd", "solver.max_time_s=600"])`` returns the plain ``dict`` that
``detkit.engine.run.train_from_config`` takes. ``${hydra:runtime.choices.backbone}`` (the run
folder's backbone name) resolves as under ``@hydra.main``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package


class ConfigError(ValueError):
    """The overrides do not compose into a run config (unknown group option, key or value)."""


def compose_run_config(overrides: Sequence[str] = (), *, config_name: str = "train") -> dict[str, Any]:
    """``configs/<config_name>.yaml`` with Hydra ``overrides`` -> a resolved plain ``dict``.

    Raises:
        ConfigError: Hydra or OmegaConf refuses an override (the message is theirs, first line).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)  # what @hydra.main does: ${hydra:...} resolves
            with open_dict(cfg):
                del cfg["hydra"]  # Hydra's own node (job numbers, ...) is not part of the run config
            conf = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"configs/{config_name}.yaml with {list(overrides)}: {str(e).splitlines()[0]}") from e
    return conf
