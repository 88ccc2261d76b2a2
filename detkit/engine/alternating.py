"""Faster R-CNN's "4-Step Alternating Training" (Ren et al. 2015, §3.2), ``method.training=alternating``.

    step 1  rpn       train trunk + RPN (the config's initial weights; roi head untouched).
    step 2  detector  a *separate* Faster R-CNN, built with the same seed (same initialisation),
                      trains its trunk + region head + predictor as detkit's ``FastRCNN`` on the
                      step-1 RPN's proposals (``DetectionDataset(proposals=...)``, as Fast R-CNN).
    step 3  rpn       on the step-2 model: the shared conv layers (the trunk) FIXED, only the
                      layers unique to the RPN (its 3x3 conv + sibling 1x1s, freshly initialised,
                      as the original code did) are fine-tuned.
    step 4  detector  trunk still fixed: only the layers unique to Fast R-CNN (region head +
                      predictor) are fine-tuned, on the step-3 RPN's proposals.

The result is one Faster R-CNN whose trunk is shared by its RPN and its detector; it is saved as
an ordinary Faster R-CNN checkpoint (``last.pt``), so tools/infer.py and tools/eval.py use it
unchanged. "Fixed" = ``requires_grad`` off (``detkit.backbones.base.freeze``) *and* the trunk kept
in eval mode (``StepNet.train``), so batch-norm statistics do not move either.

Files in ``run_dir``: ``step_<k>/`` is step k's ``Trainer`` folder (``last.pt``, exact resume
inside the step, ``tb/``); steps 1 and 3 end by writing their RPN's proposals over the train split
(``step_<k>/proposals_train.npz``, original-image pixels, the format of
``detkit.proposals.cache.write_proposals_file``); ``step_<k>.pt`` (written atomically when step k is
over) is a whole Faster R-CNN checkpoint of that moment, with the fingerprint of the config keys
that determine steps 1..k (:func:`step_fingerprint`). A resumed run (``resume=true``) reuses the steps
whose fingerprint the current config still has and continues inside the step it was in (when that
step's ``last.pt`` was trained under the same settings, its length aside); a changed setting
recomputes its step and every later one, the log naming the keys (as ``detkit.engine.stages``).
``overwrite=true`` starts over.

Solver of step k: ``solver.*`` with the non-null keys of ``method.alternating.step_<k>``
(configs/method/faster_rcnn.yaml). Cost in ``metrics.json`` (``detkit.engine.run``'s fields):
``train_seconds`` sums the steps (each: its ``Trainer``'s training seconds, summed across resumes,
plus the proposal pass that ends steps 1 and 3); ``train_step_seconds`` has each step;
``train_images_per_second`` = all steps' images / their training seconds; ``stopped_by`` is
``max_time_s`` if any step's budget ended it. Single process only (no DDP); ``eval_every`` and
``compile`` are ignored.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from detkit.engine.checkpoint import atomic_torch_save, load_checkpoint, load_model_weights, make_state
from detkit.engine.inference import rpn_proposals
from detkit.engine.run_guard import fingerprint, guard_run_dir, reusable_prefix, show_keys, stale_keys
from detkit.engine.trainer import Trainer

log = logging.getLogger("detkit.alternating")

STEPS = {1: "rpn", 2: "detector", 3: "rpn", 4: "detector"}
# What the steps depend on (method.model's test-time keys and run-length keys excepted: run_guard).
STEP_INPUTS = ("seed", "init_from", "amp", "channels_last", "data", "backbone", "method.name", "method.model", "solver",
               "method.alternating.proposals_per_image")
STEP_NOT_INPUTS = ("data.val", "data.test", "data.proposals")
TRAINER_KEYS = ("amp", "channels_last", "num_workers", "checkpoint_every", "keep_every", "log_every",
                "skip_nonfinite", "progress", "tensorboard")


class StepNet(nn.Module):
    """The part of a Faster R-CNN that one step trains, as a ``Trainer`` model.

    Args:
        net: a ``FasterRCNN`` (``rpn_only``: train mode returns only ``{"rpn_objectness",
            "rpn_box"}``) or a ``FastRCNN`` sharing a Faster R-CNN's backbone and roi head (train
            mode: ``{"roi_cls", "roi_box"}`` on ``proposals``).
        rpn_only: compute the RPN losses only (trunk + RPN forward; the roi head is not run).
        fixed: modules kept in eval mode whatever ``train()`` says (the fixed shared conv layers:
            batch-norm statistics must not move). Not registered: they live inside ``net``.
    """

    def __init__(self, net: nn.Module, *, rpn_only: bool, fixed: Iterable[nn.Module] = ()) -> None:
        super().__init__()
        self.net = net
        self.rpn_only = bool(rpn_only)
        self._fixed = tuple(fixed)  # a tuple: not submodules, so state_dict keys stay those of net

    def train(self, mode: bool = True) -> StepNet:
        super().train(mode)
        for m in self._fixed:
            m.eval()
        return self

    def forward(self, batch, targets: list[dict] | None = None, proposals=None):
        if not self.rpn_only:
            return self.net(batch, targets, proposals=proposals)
        if not self.training:
            return self.net(batch)
        d = self.net
        images, image_hw = d.preprocess(batch)
        gt_boxes, _, gt_valid = d.prepare_targets(targets, len(batch))
        _, _, losses = d.rpn(d.backbone(images), image_hw, gt_boxes, gt_valid)
        return losses


def set_trainable(model: nn.Module, parts: Iterable[nn.Module], allowed: dict[int, bool]) -> None:
    """``requires_grad`` on for the parameters of ``parts`` that ``allowed`` (the flags the model
    was built with: the backbone's own ``frozen_stages``) permits; off for all others."""
    from detkit.backbones.base import freeze

    train_ids = {id(p) for m in parts for p in m.parameters()}
    freeze(model)
    for p in model.parameters():
        if id(p) in train_ids and allowed[id(p)]:
            p.requires_grad_(True)


def step_solver(conf: dict, k: int) -> dict[str, Any]:
    """``solver.*`` with step k's non-null overrides from ``method.alternating.step_<k>``."""
    solver = dict(conf["solver"])
    over = dict((conf["method"].get("alternating") or {}).get(f"step_{k}") or {})
    unknown = sorted(set(over) - set(solver))
    if unknown:
        raise ValueError(f"method.alternating.step_{k}: {unknown} are not solver keys (configs/train.yaml solver.*; "
                         "see configs/method/faster_rcnn.yaml)")
    solver.update({key: v for key, v in over.items() if v is not None})
    return solver


def step_fingerprint(conf: dict, k: int, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config keys that determine step ``k`` (1..4) and the steps before it."""
    include = (*STEP_INPUTS, *(f"method.alternating.step_{j}" for j in range(1, k + 1)))
    return fingerprint(conf, include=include, exclude=(*STEP_NOT_INPUTS, *exclude))


def _reusable_steps(conf: dict, run_dir: Path) -> int:
    """The last step (0: none) whose ``step_<k>.pt`` the current config may reuse; logs why not the next."""
    count, stale = reusable_prefix([(_step_path(run_dir, k), "step_fingerprint", step_fingerprint(conf, k))
                                    for k in STEPS])
    if stale is not None:
        log.info("alternating step %d and every later step are computed again: the config changed (%s) since %s",
                 count + 1, show_keys(stale[1]), stale[0])
    return count


def _step_resumable(conf: dict, k: int, path: Path) -> bool:
    """Step k's own ``last.pt`` was trained under the current settings (its length aside)."""
    if not path.is_file():
        return False
    length = ("solver.max_iters", "solver.max_time_s", f"method.alternating.step_{k}.max_iters")
    stored = load_checkpoint(path).get("config") or {}
    if stale_keys(step_fingerprint(stored, k, exclude=length), step_fingerprint(conf, k, exclude=length)):
        log.info("alternating step %d starts over: %s was trained under other settings", k, path)
        return False
    return True


def run_step(k: int, model, dataset, conf: dict, run_dir: Path, device, names, cat_ids, *,
             resume: bool = True) -> dict[str, Any]:
    """Step k's training with ``Trainer`` in ``run_dir/step_<k>`` (resumes inside the step when
    ``resume`` and its ``last.pt`` was trained under the current settings).

    ``model`` is the Faster R-CNN being built; what is trained and what is fixed follows the
    module docstring. Returns the step's record (iterations, seconds, losses, what was trained).
    """
    from detkit.methods.fast_rcnn import FastRCNN

    allowed = getattr(model, "_alternating_allowed", None)
    if allowed is None:  # the flags the model was built with (frozen_stages), before any step changes them
        allowed = model._alternating_allowed = {id(p): p.requires_grad for p in model.parameters()}
    trunk = model.backbone.trunk
    shared_fixed = k >= 3
    if STEPS[k] == "rpn":
        parts, net = [model.rpn], StepNet(model, rpn_only=True, fixed=[trunk] if shared_fixed else [])
        if not shared_fixed:
            parts.append(trunk)
    else:
        fast = FastRCNN(backbone=model.backbone, roi_head=model.roi_head, num_classes=model.num_classes,
                        train_on_difficult=model.train_on_difficult, channels_last=model.channels_last)
        parts, net = [model.roi_head], StepNet(fast, rpn_only=False, fixed=[trunk] if shared_fixed else [])
        if not shared_fixed:
            parts.append(trunk)
    set_trainable(model, parts, allowed)
    solver = step_solver(conf, k)
    trainer = Trainer(model=net, train_dataset=dataset, run_dir=run_dir / f"step_{k}", device=device,
                      seed=int(conf.get("seed", 0)), config=conf, class_names=names, category_ids=cat_ids,
                      **{key: conf[key] for key in TRAINER_KEYS if key in conf}, **solver)
    summary = trainer.fit(resume=resume and _step_resumable(conf, k, run_dir / f"step_{k}" / "last.pt"))
    losses = [h["loss"] for h in trainer.history]
    return {"trained": "+".join(("trunk" if m is trunk else "rpn" if m is model.rpn else "roi_head") for m in parts),
            "iteration": summary["iteration"], "max_iters": trainer.max_iters, "batch_size": trainer.batch_size,
            "train_seconds": summary["train_seconds"], "stopped_by": summary["stopped_by"],
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _step_path(run_dir: Path, k: int) -> Path:
    return run_dir / f"step_{k}.pt"


def _proposals_path(run_dir: Path, k: int) -> Path:
    return run_dir / f"step_{k}" / "proposals_train.npz"


def train_alternating(cfg, *, start: str | None = None) -> dict[str, Any]:
    """``tools/train.py method=faster_rcnn method.training=alternating``: steps 1-4 (reusing
    finished ones on ``resume``), ``last.pt``, then the test split's ``metrics.json`` /
    ``detections.json`` as ``detkit.engine.run.train_from_config`` writes them. ``start``:
    :func:`detkit.engine.run_guard.guard_run_dir`'s answer (computed here when not given)."""
    from omegaconf import DictConfig, OmegaConf

    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import build_transforms
    from detkit.engine import distributed as ddp
    from detkit.engine.checkpoint import build_model
    from detkit.engine.report import test_and_report
    from detkit.engine.setup import apply_init_from, fit_auto_anchors, load_split, prepare_data, set_algorithms
    from detkit.methods.faster_rcnn import FasterRCNN
    from detkit.proposals.cache import read_proposals_file, write_proposals_file

    conf = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    method = conf["method"]
    training = method.get("training", "joint")
    if training != "alternating":
        raise ValueError(f"method.training must be 'joint' or 'alternating', got {training!r} "
                         "(configs/method/faster_rcnn.yaml)")
    ddp.require_one_process("method.training=alternating")
    start = start or guard_run_dir(conf)
    if (conf.get("compile") or {}).get("enabled", False):
        log.warning("compile.enabled is ignored by the 4-step alternating training")
    if conf.get("eval_every"):
        log.warning("eval_every is ignored by the 4-step alternating training (the test split is scored at the end)")
    alt = dict(method.get("alternating") or {})
    top_n = int(alt.get("proposals_per_image") or 2000)
    device, progress = ddp.resolve_device(conf.get("device", "auto")), bool(conf.get("progress", True))
    seed, data_cfg, run_dir = int(conf.get("seed", 0)), conf["data"], Path(conf["run_dir"])
    amp = conf.get("amp", "none")
    set_algorithms(conf)
    prepare_data(data_cfg)
    train_data = load_split(data_cfg, "train")
    names, cat_ids = list(train_data.class_names), list(train_data.category_ids)
    fit_auto_anchors(conf, train_data)
    tf = dict(data_cfg.get("transforms") or {})
    min_size, max_size = tf.get("min_size", 600), tf.get("max_size", 1000)
    train_tf = build_transforms(train=True, **tf)

    def fresh() -> FasterRCNN:
        """The config's Faster R-CNN, seeded: steps 1 and 2 start from the same initialisation."""
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        model = build_model(conf, len(names))
        apply_init_from(model, conf, names)  # steps 1 and 2 start from it
        if not isinstance(model, FasterRCNN):
            raise ValueError(f"method.training=alternating needs a Faster R-CNN (method.model._target_), "
                             f"got {type(model).__name__}")
        model._alternating_allowed = {id(p): p.requires_grad for p in model.parameters()}  # frozen_stages
        return model

    def load_step(k: int) -> tuple[FasterRCNN, dict]:
        model, ckpt = fresh(), load_checkpoint(_step_path(run_dir, k))
        load_model_weights(model, ckpt["model"], source=str(_step_path(run_dir, k)))
        return model, dict(ckpt.get("metrics", {}).get("alternating", {}))

    def finish(k: int, model, record: dict, info: dict) -> None:
        """After steps 1 and 3: the RPN's train-split proposals; then ``step_<k>.pt``."""
        if STEPS[k] == "rpn":
            t0 = time.perf_counter()
            # at the test resize; pre-NMS count of training (the RPN's train setting), then top_n
            props = rpn_proposals(model, train_data, build_transforms(train=False, min_size=min_size, max_size=max_size),
                                  device=device, top_n=top_n, pre_nms_top_n=model.rpn.pre_nms_top_n[True],
                                  batch_size=int(dict(conf.get("test") or {}).get("batch_size", 2)),
                                  amp=amp, progress=progress)
            write_proposals_file(_proposals_path(run_dir, k), props, train_data)
            record["proposal_seconds"] = time.perf_counter() - t0
            record["mean_proposals"] = float(np.mean([len(b) for b in props.values()]))
        record["seconds"] = record["train_seconds"] + record.get("proposal_seconds", 0.0)
        info[f"step_{k}"] = record
        state = make_state(model=model, iteration=record["iteration"], config=conf, class_names=names,
                           category_ids=cat_ids, metrics={"alternating": info})
        state["step_fingerprint"] = step_fingerprint(conf, k)
        atomic_torch_save(state, _step_path(run_dir, k))
        log.info("alternating step %d (%s) done in %.1f s -> %s", k, record["trained"], record["seconds"],
                 _step_path(run_dir, k))

    done = _reusable_steps(conf, run_dir) if start == "resume" else 0
    info: dict[str, Any] = {}
    model = None
    if done:
        model, info = load_step(done)
        info = {key: v for key, v in info.items() if int(key.split("_")[1]) <= done}
        log.info("alternating steps 1-%d already done (%s): skipped", done, _step_path(run_dir, done))
        if progress:
            tqdm.write(f"alternating training: steps 1-{done} already done, skipped")
    for k in range(done + 1, 5):
        if k == 2 and model is not None:
            del model  # the step-1 network has served (its proposals are on disk); step 2 starts afresh
            model = None
        if model is None:
            model = fresh()
        if STEPS[k] == "rpn":
            dataset = DetectionDataset(train_data, train_tf)
        else:
            props = read_proposals_file(_proposals_path(run_dir, k - 1), train_data)
            dataset = DetectionDataset(train_data, train_tf, proposals=props)
        log.info("alternating step %d of 4: %s", k, STEPS[k])
        finish(k, model, run_step(k, model, dataset, conf, run_dir, device, names, cat_ids,
                                  resume=start == "resume"), info)
    model.to(device).eval()
    iteration = sum(int(r["iteration"]) for r in info.values())
    atomic_torch_save(make_state(model=model, iteration=iteration, config=conf, class_names=names,
                                 category_ids=cat_ids, metrics={"alternating": info}), run_dir / "last.pt")
    images = sum(int(r["iteration"]) * int(r["batch_size"]) for r in info.values())
    trainer_seconds = sum(float(r["train_seconds"]) for r in info.values())
    summary: dict[str, Any] = {
        "iteration": iteration, "alternating": info, "checkpoint": str(run_dir / "last.pt"),
        "train_seconds": sum(float(r["seconds"]) for r in info.values()),
        "train_step_seconds": {k: r["seconds"] for k, r in info.items()},
        "train_images_per_second": images / trainer_seconds if trainer_seconds > 0 else None,
        "stopped_by": "max_time_s" if any(r["stopped_by"] == "max_time_s" for r in info.values()) else "max_iters"}
    test_cfg = dict(conf.get("test") or {})
    if test_cfg.get("enabled", True) and data_cfg.get("test"):
        test_data = load_split(data_cfg, "test", names)
        test_set = DetectionDataset(test_data, build_transforms(train=False, min_size=min_size, max_size=max_size))
        facts = {"training": "alternating", "iteration": iteration,
                 "max_iters": sum(int(r["max_iters"]) for r in info.values()),
                 "max_time_s": conf["solver"].get("max_time_s"),
                 **{key: summary[key] for key in ("train_seconds", "train_step_seconds", "train_images_per_second",
                                                  "stopped_by")},
                 "batch_size": int(conf["solver"].get("batch_size", 2)), "alternating": info}
        summary["test"] = test_and_report(model, test_data, test_set, run_dir=run_dir, device=device,
                                          test_cfg=test_cfg, facts=facts, amp=amp,
                                          channels_last=bool(conf.get("channels_last", False)), progress=progress)
    return summary
