"""From a composed Hydra config to a finished run: data, proposals, model, ``Trainer``, test scores.

``train_from_config`` is everything ``tools/train.py`` does; R-CNN and SPPNet branch off to their
stage-wise training (``detkit.engine.stages``). The loop itself is ``detkit.engine.trainer``.

``metrics.json`` holds the test scores plus the run's cost (``run_facts``): ``train_seconds``
(training wall time, evaluation and checkpoint writes excluded, summed across resumes),
``train_images_per_second``, ``stopped_by`` (``max_iters`` | ``max_time_s``),
``test_seconds_per_image`` (wall time of the whole test pass / images: data loading in
``test.num_workers`` processes, host-to-device copy, the model's forward *with* its
post-processing, conversion of the boxes to the original image), ``test_model_seconds_per_image``
(the model call alone, GPU-synchronised), ``machine`` and ``git`` (``detkit.analysis.machine``).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from detkit.engine import distributed as ddp
from detkit.engine.evaluator import score_detections, timed_predict
from detkit.engine.run_guard import guard_run_dir
from detkit.engine.trainer import Trainer, log

def resolve_root(root: str | Path) -> Path:
    """A data root as given; a relative path is tried against the cwd, then the repository."""
    p = Path(root).expanduser()
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2]
    return repo / p if (repo / p).exists() else p


def load_split(data_cfg: dict, split: str, class_names: Sequence[str] | None = None):
    """The ``DetectionData`` of ``data_cfg[split]`` (``{roots, splits, ...}`` VOC or
    ``{annotation_file, image_root, ...}`` COCO, extra keys passed to the loader), or ``None``."""
    spec = data_cfg.get(split)
    if not spec:
        return None
    spec = dict(spec)
    name = f"{data_cfg.get('name', 'data')}/{split}"
    names = class_names or data_cfg.get("class_names") or None
    fmt = data_cfg.get("format", "voc")
    if fmt == "voc":
        from detkit.data.voc import load_voc
        roots = [resolve_root(r) for r in spec.pop("roots")]
        return load_voc(roots, spec.pop("splits", split), names, name=name, **spec)
    if fmt == "coco":
        from detkit.data.coco import load_coco
        return load_coco(resolve_root(spec.pop("annotation_file")), resolve_root(spec.pop("image_root")),
                         class_names=names, name=name, **spec)
    raise ValueError(f"data.format must be 'voc' or 'coco', got {fmt!r}")


def prepare_data(data_cfg: dict) -> None:
    """Generate a data set that builds itself (``data.generate``) when its root is absent."""
    gen = data_cfg.get("generate")
    if not gen:
        return
    root = Path(data_cfg["root"])
    if ddp.is_main() and not (root / "Annotations").is_dir():
        from detkit.data.synthetic import make_synthetic_voc
        log.info("generating the %s data set into %s", data_cfg.get("name"), root)
        make_synthetic_voc(root, **dict(gen))
    ddp.barrier()


def split_proposals(conf: dict, data, split: str) -> dict[str, Any]:
    """``{"proposals": {image_id: (P, 4)}}`` (``DetectionDataset`` keywords) of split ``split`` when
    ``conf["method"]`` trains on precomputed proposals (``requires_proposals``), from the
    ``data.proposals`` node (detkit/proposals/source.py; selective search is computed into its cache
    on the main rank when missing); ``{}`` for the other methods or a split without data."""
    if data is None or not conf["method"].get("requires_proposals"):
        return {}
    from detkit.proposals.source import load_configured_proposals, prepare_proposals

    spec = conf["data"].get("proposals")
    if ddp.is_main():
        prepare_proposals(spec, data, progress=None if conf.get("progress", True) else False)
    ddp.barrier()
    return {"proposals": load_configured_proposals(spec, data, split=split)}


def fit_auto_anchors(conf: dict, train_data) -> None:
    """``method.model.anchor_sizes: auto`` -> sizes fitted to ``train_data``'s boxes at the training
    scale (``detkit.proposals.anchor_fit``), written into ``conf`` (so checkpoints store them) and
    logged. Other values are left alone."""
    model = conf["method"].get("model") or {}
    if model.get("anchor_sizes") != "auto":
        return
    from detkit.proposals.anchor_fit import box_sides, fit_anchor_sizes

    tf = conf["data"].get("transforms") or {}
    sides = box_sides(train_data, min_size=tf.get("min_size", 600), max_size=tf.get("max_size", 1000))
    model["anchor_sizes"] = fit_anchor_sizes(sides)
    if len(sides):
        log.info("anchor sizes fitted to the %d training boxes (sqrt(w*h) at the training scale: 2nd-98th "
                 "percentile %.0f-%.0f px): %s", len(sides), np.percentile(sides, 2), np.percentile(sides, 98),
                 model["anchor_sizes"])


def run_facts(device: torch.device) -> dict[str, Any]:
    """``{"machine": ..., "git": ...}`` of this process (the context every timing needs). Where
    the checkout has no ``.git`` (a copied tree), ``DETKIT_COMMIT`` in the environment names it."""
    import os

    from detkit.analysis.machine import git_commit, machine_info

    git = git_commit()
    if git.get("commit") is None and os.environ.get("DETKIT_COMMIT"):
        git = {"commit": os.environ["DETKIT_COMMIT"], "dirty": None, "source": "DETKIT_COMMIT"}
    return {"machine": machine_info(device), "git": git}


def set_algorithms(conf: dict) -> None:
    """``deterministic`` (deterministic kernels, no autotuning) or ``cudnn_benchmark``."""
    if conf.get("deterministic", False):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:  # autotuning pays for fixed input sizes, costs a search per new shape when sizes vary
        torch.backends.cudnn.benchmark = bool(conf.get("cudnn_benchmark", True))


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
