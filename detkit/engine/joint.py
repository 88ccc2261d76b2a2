"""Joint training (``recipe: joint``): one model, one ``Trainer``, end to end.

Faster R-CNN's approximate joint training (RPN and Fast R-CNN head together), Fast R-CNN on given
proposals and OverFeat all train this way: data and proposals from the run set-up
(``detkit.engine.setup``), the loop of ``detkit.engine.trainer``, the test tail of
``detkit.engine.report``. ``metrics.json`` adds ``iteration``, ``max_iters``, ``max_time_s``,
``train_seconds`` (training wall time, evaluation and checkpoint writes excluded, summed across
resumes), ``train_images_per_second``, ``stopped_by`` (``max_iters`` | ``max_time_s``) and the global
``batch_size`` to the test tail's fields.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkit.engine import distributed as ddp
from detkit.engine.report import test_and_report
from detkit.engine.setup import (apply_init_from, fit_auto_anchors, load_split, prepare_data, set_algorithms,
                                 split_proposals)
from detkit.engine.trainer import Trainer


def train_joint(conf: dict[str, Any], *, start: str = "new",
                wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict[str, Any]:
    """Train ``conf``'s detector end to end and test it (module docstring).

    Args:
        conf: the resolved run config.
        start: ``detkit.engine.run_guard.guard_run_dir``'s answer (``new`` | ``resume`` | ``overwrite``).
        wrap_model: replaces the built detector by another of the same detector contract (the
            accuracy comparison trains torchvision's twin of it with the same data, loop and test).
    """
    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import build_transforms, eval_transforms
    from detkit.engine.checkpoint import build_model

    device = ddp.resolve_device(conf.get("device", "auto"))
    ddp.init_distributed(device)
    seed, data_cfg, solver = int(conf.get("seed", 0)), conf["data"], dict(conf["solver"])
    set_algorithms(conf)
    if conf["method"].get("requires_proposals"):  # a missing/bad data.proposals fails before any work
        from detkit.proposals.source import check_proposals_spec
        try:
            check_proposals_spec(data_cfg.get("proposals"))
        except ValueError as e:
            raise ValueError(f"method {conf['method'].get('name')!r} trains on precomputed proposals: {e}") from None
    prepare_data(data_cfg)
    train_data = load_split(data_cfg, "train")
    names, cat_ids = list(train_data.class_names), list(train_data.category_ids)
    test_cfg = dict(conf.get("test") or {})
    # read now: a test split that cannot be loaded fails before training, not after it
    test_data = load_split(data_cfg, "test", names) if test_cfg.get("enabled", True) else None
    fit_auto_anchors(conf, train_data)
    val_data = load_split(data_cfg, "val", names) if conf.get("eval_every") else None
    tf = dict(data_cfg.get("transforms") or {})
    test_tf = eval_transforms(tf)
    # The same seed on every rank: DDP starts from identical weights (it also broadcasts them).
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build_model(conf, len(names))
    if start != "resume":  # a resumed run has its own weights
        apply_init_from(model, conf, names)
    if wrap_model is not None:
        model = wrap_model(model)
    comp = dict(conf.get("compile") or {})
    if comp.pop("enabled", False):  # in place (nn.Module.compile): checkpoints keep their keys
        from detkit.engine.compile import compile_model
        compile_model(model, **{k: tuple(v) if k == "parts" else v for k, v in comp.items() if v is not None})
    run_dir = Path(conf["run_dir"])
    trainer = Trainer(
        model=model, train_dataset=DetectionDataset(train_data, build_transforms(train=True, **tf),
                                                    **split_proposals(conf, train_data, "train")), run_dir=run_dir,
        device=device, seed=seed, config=conf, class_names=names, category_ids=cat_ids,
        val_dataset=DetectionDataset(val_data, test_tf, **split_proposals(conf, val_data, "val"))
        if val_data is not None else None, val_data=val_data,
        **{k: conf[k] for k in ("amp", "channels_last", "num_workers", "checkpoint_every", "keep_every",
                                "eval_every", "log_every", "skip_nonfinite", "progress", "tensorboard",
                                "find_unused_parameters") if k in conf},
        **solver,
    )
    summary = trainer.fit(resume=bool(conf.get("resume", False)) and start != "overwrite")
    if test_data is not None:
        test_set = DetectionDataset(test_data, test_tf, **split_proposals(conf, test_data, "test"))
        facts = {"iteration": trainer.iteration, "max_iters": trainer.max_iters, "max_time_s": trainer.max_time_s,
                 **{k: summary[k] for k in ("train_seconds", "train_images_per_second", "stopped_by")},
                 "batch_size": trainer.batch_size * ddp.get_world_size()}
        scores = test_and_report(trainer.model, test_data, test_set, run_dir=run_dir, device=device,
                                 test_cfg=test_cfg, facts=facts, amp=trainer.amp,
                                 channels_last=trainer.channels_last, progress=trainer.progress)
        if scores is not None:
            summary["test"] = scores
    ddp.barrier()
    return summary
