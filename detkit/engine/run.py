"""From a composed Hydra config to a finished run: data, proposals, model, ``Trainer``, test scores.

``train_from_config`` is everything ``tools/train.py`` does; R-CNN and SPPNet branch off to their
stage-wise training (``detkit.engine.stages``). The loop itself is ``detkit.engine.trainer``.

``metrics.json`` holds the test scores plus the run's cost (``run_facts``): ``train_seconds``
(training wall time, evaluation and checkpoint writes excluded, summed across resumes),
``train_images_per_second``, ``stopped_by`` (``max_iters`` | ``max_time_s``),
``test_seconds_per_image`` (wall time of the whole test pass / images: data loading in
``test.num_workers`` processes, host-to-device copy, the model's forward *with* its
post-processing, conversion of the boxes to the original image), ``test_model_seconds_per_image``
(the model call alone, GPU-synchronised), ``machine`` and ``git`` (``detkit.utils.provenance``).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detkit.engine import distributed as ddp
from detkit.engine.evaluator import score_detections, timed_predict
from detkit.engine.run_guard import guard_run_dir
from detkit.engine.setup import fit_auto_anchors, load_split, prepare_data, set_algorithms, split_proposals
from detkit.engine.trainer import Trainer, log
from detkit.utils.provenance import run_facts

def train_from_config(cfg, *, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict[str, Any]:
    """Everything ``tools/train.py`` does: data, model, ``Trainer.fit``, final test evaluation.

    ``cfg`` is the composed config of ``configs/train.yaml`` (a ``DictConfig`` or plain dict).
    Writes ``run_dir/last.pt``, ``run_dir/metrics.json`` and ``run_dir/detections.json``.
    ``wrap_model`` replaces the built detector by another following the same detector contract
    (the accuracy comparison trains torchvision's twin of it with the same data, loop and test).
    """
    from omegaconf import DictConfig, OmegaConf

    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import build_transforms, eval_transforms
    from detkit.engine.checkpoint import build_model
    from detkit.engine.evaluator import write_json
    from detkit.evaluation.detections import save_detections

    conf = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    start = guard_run_dir(conf)  # new | resume | overwrite; refuses to overwrite a run unasked
    # --- R-CNN / SPPNet: stage-wise training (fine-tune, SVMs, box regression), detkit.engine.stages
    if conf["method"].get("name") in ("rcnn", "sppnet"):
        from detkit.engine.stages import train_stages
        if (conf.get("compile") or {}).get("enabled", False):
            log.warning("compile.enabled is ignored by %s's stage-wise training", conf["method"]["name"])
        return train_stages(conf, start=start)
    # --- end R-CNN / SPPNet
    # --- Faster R-CNN's 4-step alternating training (method.training=alternating), detkit.engine.alternating
    if conf["method"].get("training", "joint") != "joint":
        from detkit.engine.alternating import train_alternating
        return train_alternating(conf, start=start)
    # --- end alternating
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
    fit_auto_anchors(conf, train_data)
    val_data = load_split(data_cfg, "val", names) if conf.get("eval_every") else None
    tf = dict(data_cfg.get("transforms") or {})
    test_tf = eval_transforms(tf)
    # The same seed on every rank: DDP starts from identical weights (it also broadcasts them).
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = build_model(conf, len(names))
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
    test_cfg = dict(conf.get("test") or {})
    if test_cfg.get("enabled", True) and data_cfg.get("test"):
        test_data = load_split(data_cfg, "test", names)
        test_set = DetectionDataset(test_data, test_tf, **split_proposals(conf, test_data, "test"))
        dets, timing = timed_predict(trainer.model, test_set, device=device,
                                     batch_size=int(test_cfg.get("batch_size", 2)),
                                     num_workers=int(test_cfg.get("num_workers", 0)), amp=trainer.amp,
                                     channels_last=trainer.channels_last, progress=trainer.progress, desc="test")
        if ddp.is_main():
            scores = score_detections(dets, test_data, coco=bool(test_cfg.get("coco", True)))
            summary["test"] = scores
            save_detections(run_dir / "detections.json", dets, test_data)
            write_json(run_dir / "metrics.json", {
                "data": test_data.name, "num_images": len(test_data), "iteration": trainer.iteration,
                "max_iters": trainer.max_iters, "max_time_s": trainer.max_time_s,
                "train_seconds": summary["train_seconds"], "train_images_per_second": summary["train_images_per_second"],
                "stopped_by": summary["stopped_by"], "batch_size": trainer.batch_size * ddp.get_world_size(),
                "test_seconds_per_image": timing["seconds_per_image"],
                "test_model_seconds_per_image": timing["model_seconds_per_image"],
                **run_facts(device), **scores})
            tqdm.write(f"test mAP: VOC07 {scores['voc07']['mAP']}  VOC12 {scores['voc12']['mAP']}  "
                       f"-> {run_dir / 'metrics.json'}")
    ddp.barrier()
    return summary
