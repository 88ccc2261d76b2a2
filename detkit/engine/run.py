"""From a composed config to a finished run: the run folder's guard, then the method's recipe.

``train_from_config`` is everything ``detkit train`` does. The method config names its training
*recipe* (``method.recipe``), each sharing the run set-up (``detkit.engine.setup``) and the test
tail (``detkit.engine.report``):

* ``joint`` — one model trained end to end (``detkit.engine.joint``): Faster R-CNN, Fast R-CNN,
  OverFeat;
* ``stages`` — R-CNN's and SPPNet's fine-tuning, SVMs and box regression (``detkit.engine.stages``);
* ``alternating`` — Faster R-CNN's 4-step alternating training (``detkit.engine.alternating``;
  ``method.training=alternating``).

A new method names one of these in its config; nothing here needs to know it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from detkit.engine.run_guard import guard_run_dir

RECIPES = ("joint", "stages", "alternating")


def recipe_trainer(recipe: str) -> Callable[..., dict[str, Any]]:
    """The training function of a recipe, each called as ``f(conf, start=...)``."""
    if recipe == "joint":
        from detkit.engine.joint import train_joint
        return train_joint
    if recipe == "stages":
        from detkit.engine.stages import train_stages
        return train_stages
    if recipe == "alternating":
        from detkit.engine.alternating import train_alternating
        return train_alternating
    raise ValueError(f"method.recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


def train_from_config(cfg, *, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict[str, Any]:
    """Everything ``detkit train`` does: guard the run folder, train by the method's recipe, test.

    ``cfg`` is the composed config of ``configs/train.yaml`` (a ``DictConfig`` or plain dict).
    Writes ``run_dir/last.pt``, ``run_dir/metrics.json`` and ``run_dir/detections.json``.
    ``wrap_model`` (joint recipe only) replaces the built detector by another of the same detector
    contract (``detkit.engine.joint``).
    """
    from omegaconf import DictConfig, OmegaConf

    conf = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    start = guard_run_dir(conf)  # new | resume | overwrite; refuses to overwrite a run unasked
    recipe = (conf.get("method") or {}).get("recipe", "joint")
    train = recipe_trainer(recipe)
    if wrap_model is not None:
        if recipe != "joint":
            raise ValueError(f"wrap_model needs the joint recipe, the method's is {recipe!r}")
        return train(conf, start=start, wrap_model=wrap_model)
    return train(conf, start=start)
