"""Stage-wise training of R-CNN and SPPNet (``tools/train.py method=rcnn|sppnet``).

    stage 1  finetune  fine-tune on regions (R-CNN: the whole network on warped regions; SPPNet:
                       fc layers on SPP features, conv frozen); softmax over K + 1, 32 positive
                       (IoU >= 0.5) + 96 background regions per step. ``detkit.engine.trainer.Trainer``
                       runs it (exact resume from ``run_dir/finetune/last.pt``).
    stage 2  svm       fc7 features of every training region (ground truth + all proposals),
                       cached; one linear SVM per class with hard-negative mining
                       (``detkit.rcnn.svm.train_class_svms``: ground truth positive, IoU < 0.3 negative).
    stage 3  bbox      pool5 (SPPNet: SPP) features of the regions with IoU > 0.6; class-specific
                       ridge box regression, lambda = 1000 (``detkit.rcnn.bbox_regression``).

Each stage ends by writing ``run_dir/stage<i>_<name>.pt`` atomically (a detkit checkpoint of the
whole model, with the *fingerprint* of the config keys that determine it and the stages before it:
:func:`stage_fingerprint`). A resumed run (``resume=true``) reuses the stages whose fingerprint the
current config still has, loads the last of them, and goes on with the next one: an interrupted run
continues where it stopped, a finished one skips to the test, and a changed setting (the SVMs' C,
the box regression's lambda, ...) recomputes its stage and every later one, the log naming the keys
that changed. Stage 1's trainer continues its own ``finetune/last.pt`` only when that was trained
under the same settings (its length aside). Then ``last.pt``
(for ``detkit infer`` / ``detkit.load``), and the test tail every recipe shares
(``detkit.engine.report``: the test split's ``detections.json`` and ``metrics.json``).

Proposals come from ``data.proposals`` (``detkit.proposals.source``: a file, or selective search
cached on disk); they reach the model through
``DetectionDataset(..., proposals=)`` in the resized image's pixels. Training images use the test
resize (no flip): the stages see every image at one scale, as the papers' feature caches did.

Feature cache of stage 2 (``stages.svm.feature_cache``): ``memory``, ``disk`` (one float16 file per
image in ``run_dir/cache/fc7-<hash of stage 1's fingerprint>/``, written atomically, reused by a
resumed run while stage 1 is the same) or ``auto`` (memory up
to ``memory_limit_mb``). Its size, ``regions x D x 2`` bytes, is logged before anything is written.
The SVM solver then holds all features on the model's device. Single process only (no DDP).

Cost in ``metrics.json`` (beside the test tail's fields): ``train_seconds`` is the sum of the
stages' wall times (``train_stage_seconds`` has each; a stage finished by an earlier, resumed call
keeps the seconds it took then), ``train_images_per_second`` and ``stopped_by`` are stage 1's
(``method.stages.finetune.max_time_s`` bounds it), ``test_seconds_per_image`` the whole test pass
(image loading included) and ``test_model_seconds_per_image`` the model calls alone (proposal
search excluded in both: the proposals are given).
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from detkit.engine.checkpoint import atomic_torch_save, load_checkpoint, load_model_weights, make_state
from detkit.engine.run_guard import (fingerprint, fingerprint_hash, guard_run_dir, reusable_prefix, show_keys,
                                     stale_keys)

log = logging.getLogger("detkit.stages")

STAGES = ("finetune", "svm", "bbox")
# What the stages depend on (method.model's test-time keys and run-length keys excepted: run_guard).
STAGE_INPUTS = ("seed", "init_from", "amp", "channels_last", "data", "backbone", "method.name", "method.model")
STAGE_NOT_INPUTS = ("data.val", "data.test", "data.proposals.cache_dir", "data.proposals.workers",
                    "method.stages.svm.feature_cache", "method.stages.svm.memory_limit_mb")


def stage_fingerprint(conf: dict, i: int, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config keys that determine stage ``i`` (0-based) and the stages before it."""
    include = (*STAGE_INPUTS, *(f"method.stages.{name}" for name in STAGES[: i + 1]))
    return fingerprint(conf, include=include, exclude=(*STAGE_NOT_INPUTS, *exclude))


def load_split_proposals(conf: dict, data, split: str) -> dict[int, np.ndarray]:
    """``{image_id: (P, 4)}`` original-image proposals of ``data`` from the ``data.proposals`` node
    (``detkit.proposals.source``; selective search is computed into its cache first where missing)."""
    from detkit.proposals.source import check_proposals_spec, load_configured_proposals, prepare_proposals

    try:
        spec = check_proposals_spec(conf["data"].get("proposals"))
    except ValueError as e:
        raise ValueError(f"method {conf['method'].get('name')!r} trains on proposals: {e}") from None
    prepare_proposals(spec, data, progress=bool(conf.get("progress", True)))
    return load_configured_proposals(spec, data, split=split)


def proposal_dataset(conf: dict, data, split: str, proposals: dict[int, np.ndarray] | None = None):
    """``DetectionDataset`` of ``data`` with the test resize (no flip: every stage sees each image
    at one scale, like the papers' feature caches) and ``target["proposals"]`` in its pixels."""
    if proposals is None:
        proposals = load_split_proposals(conf, data, split)
    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import eval_transforms

    return DetectionDataset(data, eval_transforms(conf["data"].get("transforms")), proposals=proposals)


# ---------------------------------------------------------------------- regions of one image
def _gt(model, target) -> tuple[torch.Tensor, torch.Tensor]:
    """Usable ground truth of one target (crowd out; difficult per ``train_on_difficult``)."""
    boxes, labels = target["boxes"].float().reshape(-1, 4), target["labels"].long().reshape(-1)
    keep = ~target["iscrowd"].bool() & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not model.train_on_difficult:
        keep &= ~target["difficult"].bool()
    return boxes[keep], labels[keep]


def image_regions(model, target) -> dict[str, torch.Tensor]:
    """R-CNN's per-image region table: ground truth first, then the proposals.

    Returns ``boxes (M, 4)``, ``gt_mask (M,)``, ``overlaps (M, K)`` (IoU with the closest ground
    truth of each class), ``labels (M,)`` (ground truth: its class; proposals: -1, their negatives
    come from ``overlaps``) and the usable ground truth ``gt_boxes``, ``gt_labels``.
    """
    gt, gl = _gt(model, target)
    h, w = target["size"]
    p = target["proposals"].float().reshape(-1, 4)
    p = torch.stack((p[:, 0].clamp(0, w), p[:, 1].clamp(0, h), p[:, 2].clamp(0, w), p[:, 3].clamp(0, h)), 1)
    p = p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])]
    boxes = torch.cat((gt, p))
    k = model.num_classes
    overlaps = torch.zeros(len(boxes), k)
    if len(gt):
        iou = box_iou(boxes, gt)
        for c in gl.unique().tolist():
            overlaps[:, c] = iou[:, gl == c].max(dim=1).values
    labels = torch.full((len(boxes),), -1, dtype=torch.long)
    gt_mask = torch.zeros(len(boxes), dtype=torch.bool)
    gt_mask[: len(gt)] = True
    labels[: len(gt)] = gl
    return {"boxes": boxes, "gt_mask": gt_mask, "overlaps": overlaps, "labels": labels,
            "gt_boxes": gt, "gt_labels": gl}


@torch.no_grad()
def region_features(model, image: torch.Tensor, boxes: torch.Tensor, device, *, pool: bool) -> torch.Tensor:
    """fc7 (or, with ``pool``, the box-regression features) of ``boxes`` on one uint8 image."""
    from detkit.data.batch import ImageBatch

    batch = ImageBatch.from_images([image]).to(device)
    images, image_hw = model.preprocess(batch)
    fc, pooled = model.region_features(images, image_hw, [boxes.to(device)], pool=pool)
    return pooled if pool else fc


# ---------------------------------------------------------------------- the stages
def _stage_path(run_dir: Path, i: int) -> Path:
    return run_dir / f"stage{i + 1}_{STAGES[i]}.pt"


def _save_stage(model, run_dir: Path, i: int, info: dict, conf: dict, names, cat_ids, iteration: int) -> None:
    state = make_state(model=model, iteration=iteration, config=conf, class_names=names, category_ids=cat_ids,
                       metrics={"stage": STAGES[i], **info})
    state["stage_fingerprint"] = stage_fingerprint(conf, i)
    atomic_torch_save(state, _stage_path(run_dir, i))


def _reusable_stages(conf: dict, run_dir: Path) -> int:
    """Index of the last stage whose checkpoint the current config may reuse (-1: none), logging
    why the next one (and all after it) will be computed again."""
    count, stale = reusable_prefix([(_stage_path(run_dir, i), "stage_fingerprint", stage_fingerprint(conf, i))
                                    for i in range(len(STAGES))])
    if stale is not None:
        log.info("stage %d (%s) and every later stage are computed again: the config changed (%s) since %s",
                 count + 1, STAGES[count], show_keys(stale[1]), stale[0])
    return count - 1


def _finetune_resumable(conf: dict, path: Path) -> bool:
    """Stage 1's own ``last.pt`` was trained under the current settings (its length aside)."""
    if not path.is_file():
        return False
    length = ("method.stages.finetune.max_iters", "method.stages.finetune.max_time_s")
    stored = load_checkpoint(path).get("config") or {}
    if stale_keys(stage_fingerprint(stored, 0, exclude=length), stage_fingerprint(conf, 0, exclude=length)):
        log.info("stage 1 starts over: %s was trained under other settings", path)
        return False
    return True


def finetune(model, dataset, conf: dict, run_dir: Path, device, names, cat_ids, *, resume: bool = True) -> dict:
    """Stage 1 with the generic ``Trainer`` (its own resumable ``run_dir/finetune/last.pt``,
    continued when ``resume`` and it was trained under the current settings)."""
    from detkit.engine.trainer import Trainer

    ft = dict(conf["method"]["stages"]["finetune"])
    if int(ft.get("max_iters", 0)) <= 0:
        return {"iteration": 0}
    resume = resume and _finetune_resumable(conf, run_dir / "finetune" / "last.pt")
    trainer = Trainer(model=model, train_dataset=dataset, run_dir=run_dir / "finetune", device=device,
                      seed=int(conf.get("seed", 0)), config=conf, class_names=names, category_ids=cat_ids,
                      **{k: conf[k] for k in ("amp", "num_workers", "checkpoint_every", "log_every", "progress",
                                              "tensorboard", "skip_nonfinite") if k in conf}, **ft)
    summary = trainer.fit(resume=resume)
    losses = [h["loss"] for h in trainer.history]
    return {"iteration": summary["iteration"], "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "train_seconds": summary["train_seconds"],
            "train_images_per_second": summary["train_images_per_second"], "stopped_by": summary["stopped_by"]}


def _feature_table(model, dataset, device, cfg: dict, cache_dir: Path, progress: bool) -> dict[str, torch.Tensor]:
    """Stage 2's cache: fc7 of all regions of every training image + their labels and overlaps."""
    d, mode = model.feature_dim, cfg.get("feature_cache", "auto")
    rows_est = sum(len(dataset.proposals[r.image_id]) + len(r.boxes) for r in dataset.data.records)  # upper bound
    mb = rows_est * d * 2 / 2**20
    if mode == "auto":
        mode = "memory" if mb <= float(cfg.get("memory_limit_mb", 2048)) else "disk"
    if mode not in ("memory", "disk"):
        raise ValueError(f"method.stages.svm.feature_cache must be memory, disk or auto, got {mode!r}")
    where = "in memory" if mode == "memory" else f"on disk in {cache_dir}"
    log.info("fc7 feature cache: %d regions x %d dims, float16 = %.1f MB, kept %s", rows_est, d, mb, where)
    if progress:
        tqdm.write(f"stage 2: fc7 cache of {rows_est} regions x {d} (float16) = {mb:.1f} MB, {where}")
    feats, meta = [], []
    for i in tqdm(range(len(dataset)), desc="stage 2: fc7 features", unit="img", disable=not progress):
        image, target = dataset[i]
        reg = image_regions(model, target)
        path = cache_dir / f"{target['image_id']:06d}.pt"
        if mode == "disk" and path.is_file():
            f = torch.load(path, map_location="cpu", weights_only=True)
        else:
            f = region_features(model, image, reg["boxes"], device, pool=False).half().cpu()
            if mode == "disk":
                atomic_torch_save(f, path)
        if f.shape != (len(reg["boxes"]), d):
            raise ValueError(f"{path}: cached features {tuple(f.shape)} do not fit {len(reg['boxes'])} regions "
                             f"x {d}; delete {cache_dir}")
        feats.append(f)
        meta.append((reg, i))
    return {
        "features": torch.cat(feats),
        "labels": torch.cat([r["labels"] for r, _ in meta]),
        "gt_mask": torch.cat([r["gt_mask"] for r, _ in meta]),
        "overlaps": torch.cat([r["overlaps"] for r, _ in meta]),
        "image_ids": torch.cat([torch.full((len(r["boxes"]),), i) for r, i in meta]),
    }


def fit_svms(model, dataset, conf: dict, run_dir: Path, device, progress: bool) -> dict:
    """Stage 2: cache fc7, fit one SVM per class, store them in the model's buffers."""
    from detkit.rcnn.svm import feature_scale, train_class_svms

    cfg = dict(conf["method"]["stages"]["svm"])
    model.eval()
    cache = run_dir / "cache" / f"fc7-{fingerprint_hash(stage_fingerprint(conf, 0))}"  # stage 1's features
    table = _feature_table(model, dataset, device, cfg, cache, progress)
    feats = table["features"].to(device).float()
    scale = feature_scale(feats)
    neg_iou = float(cfg.pop("neg_iou", 0.3))
    svm_kwargs = {k: v for k, v in cfg.items() if k not in ("feature_cache", "memory_limit_mb")}
    weights, biases = train_class_svms(feats.mul_(scale), table["labels"], table["gt_mask"], table["overlaps"],
                                       num_classes=model.num_classes, neg_iou=neg_iou,
                                       image_ids=table["image_ids"], **svm_kwargs)
    with torch.no_grad():
        model.svm_weight.copy_(weights)
        model.svm_bias.copy_(biases)
        model.svm_scale.fill_(scale)
    return {"regions": len(feats), "feature_dim": feats.shape[1], "feature_scale": scale}


def fit_bbox(model, dataset, conf: dict, device, progress: bool) -> dict:
    """Stage 3: pool5 features of regions with IoU > min_iou; ridge regressors into the model."""
    from detkit.rcnn.bbox_regression import fit_box_regressors

    cfg = dict(conf["method"]["stages"]["bbox"])
    if not cfg.get("enabled", True):
        return {"enabled": False}
    min_iou, model = float(cfg.get("min_iou", 0.6)), model.eval()
    feats, boxes, index, gts, gls = [], [], [], [], []
    for i in tqdm(range(len(dataset)), desc="stage 3: pool5 features", unit="img", disable=not progress):
        image, target = dataset[i]
        reg = image_regions(model, target)
        sel = reg["overlaps"].max(dim=1).values > min_iou
        gts.append(reg["gt_boxes"])
        gls.append(reg["gt_labels"])
        if sel.any():  # only these rows train the regressors: no need to cache the rest
            feats.append(region_features(model, image, reg["boxes"][sel], device, pool=True).float())
            boxes.append(reg["boxes"][sel])
            index.append(torch.full((int(sel.sum()),), len(gts) - 1))
    if not feats:
        raise ValueError(f"method.stages.bbox.min_iou: no training region overlaps a ground truth by more than "
                         f"{min_iou}")
    reg_model = fit_box_regressors(torch.cat(feats), torch.cat(boxes).to(device), gts, gls,
                                   num_classes=model.num_classes, image_index=torch.cat(index).to(device),
                                   lam=float(cfg.get("lam", 1000.0)), min_iou=min_iou)
    model.bbox_regressor.load_state_dict(reg_model.state_dict())
    return {"examples": reg_model.num_examples.tolist()}


# ---------------------------------------------------------------------- the driver
def train_stages(cfg, *, start: str | None = None) -> dict[str, Any]:
    """The ``stages`` recipe (R-CNN, SPPNet): stages 1-3 (reusing finished ones on ``resume``),
    ``last.pt``, then the test tail (``detkit.engine.report``). ``start``: :func:`detkit.engine.run_guard.guard_run_dir`'s answer
    (computed here when not given)."""
    from omegaconf import DictConfig, OmegaConf

    from detkit.engine import distributed as ddp
    from detkit.engine.checkpoint import build_model
    from detkit.engine.report import test_and_report
    from detkit.engine.setup import apply_init_from, load_split, prepare_data

    conf = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    if "stages" not in conf["method"]:
        raise ValueError(f"method {conf['method'].get('name')!r} has no 'stages' node (configs/method/rcnn.yaml)")
    ddp.require_one_process(f"{conf['method'].get('name')}'s stage-wise training")
    start = start or guard_run_dir(conf)
    if (conf.get("compile") or {}).get("enabled", False):
        log.warning("compile.enabled is ignored by %s's stage-wise training", conf["method"].get("name"))
    device, progress = ddp.resolve_device(conf.get("device", "auto")), bool(conf.get("progress", True))
    seed, data_cfg, run_dir = int(conf.get("seed", 0)), conf["data"], Path(conf["run_dir"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    prepare_data(data_cfg)
    train_data = load_split(data_cfg, "train")
    names, cat_ids = list(train_data.class_names), list(train_data.category_ids)
    # Proposals first (a missing or bad proposals source fails before any model work). Note:
    # detkit.proposals.cache forks its workers; with workers > 1 they were measured to hang in
    # threaded processes (after albumentations is imported, and under tools/train.py).
    test_cfg = dict(conf.get("test") or {})
    test_data = load_split(data_cfg, "test", names) if test_cfg.get("enabled", True) and data_cfg.get("test") else None
    train_props = load_split_proposals(conf, train_data, "train")
    test_props = load_split_proposals(conf, test_data, "test") if test_data is not None else None
    train_set = proposal_dataset(conf, train_data, "train", train_props)
    test_set = proposal_dataset(conf, test_data, "test", test_props) if test_data is not None else None
    model = build_model(conf, len(names)).to(device)
    apply_init_from(model, conf, names)  # stage 1 starts from it; reused stages load their own weights

    done = _reusable_stages(conf, run_dir) if start == "resume" else -1
    info: dict[str, Any] = {}
    if done >= 0:
        ckpt = load_checkpoint(_stage_path(run_dir, done))
        load_model_weights(model, ckpt["model"], source=str(_stage_path(run_dir, done)))
        info = {k: v for k, v in dict(ckpt.get("metrics", {}).get("stages", {})).items() if k in STAGES[: done + 1]}
        log.info("stages up to %s already done (%s): reused", STAGES[done], _stage_path(run_dir, done))
    for i in range(done + 1, len(STAGES)):
        t0 = time.perf_counter()
        log.info("stage %d (%s): %d training images", i + 1, STAGES[i], len(train_set))
        if i == 0:
            result = finetune(model, train_set, conf, run_dir, device, names, cat_ids, resume=start == "resume")
        elif i == 1:
            result = fit_svms(model, train_set, conf, run_dir, device, progress)
        else:
            result = fit_bbox(model, train_set, conf, device, progress)
        info[STAGES[i]] = {**result, "seconds": time.perf_counter() - t0}
        log.info("stage %d (%s) done in %.1f s", i + 1, STAGES[i], info[STAGES[i]]["seconds"])
        _save_stage(model, run_dir, i, {"stages": info}, conf, names, cat_ids,
                    int(info.get("finetune", {}).get("iteration", 0)))
    iteration = int(info.get("finetune", {}).get("iteration", 0))
    atomic_torch_save(make_state(model=model, iteration=iteration, config=conf, class_names=names,
                                 category_ids=cat_ids, metrics={"stages": info}), run_dir / "last.pt")
    summary: dict[str, Any] = {"iteration": iteration, "stages": info, "checkpoint": str(run_dir / "last.pt")}
    if test_set is not None:  # the test tail of every recipe; proposal search excluded (given)
        ft = info.get("finetune", {})
        facts = {"iteration": iteration, "stages": info,
                 "train_seconds": sum(float(v.get("seconds", 0.0)) for v in info.values()),
                 "train_stage_seconds": {k: v.get("seconds") for k, v in info.items()},
                 "train_images_per_second": ft.get("train_images_per_second"),
                 "stopped_by": ft.get("stopped_by", "max_iters")}
        scores = test_and_report(model, test_data, test_set, run_dir=run_dir, device=device, test_cfg=test_cfg,
                                 facts=facts, progress=progress, default_batch_size=1)
        summary["test"] = scores
    return summary
