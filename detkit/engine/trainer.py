"""The training loop: iteration-based SGD with exact resume, AMP, DDP, checkpoints and evaluation.

Time is counted in **iterations** (optimiser steps, ``max_iters``); epochs are passes over the
batch sampler. The state that makes a resumed run continue *exactly* is::

    iteration   steps done          epoch, position   sampler epoch and batches consumed in it
    model / optimizer / scheduler / GradScaler state  and the global RNG states
    amp         the precision the run trains in (``amp="auto"`` decides once, at the run's start)

Data order: epoch ``e``'s batches are a function of ``(seed, e)`` (``build_batch_sampler``); a
resumed run rebuilds that list and drops the first ``position`` batches **without loading their
images**. Augmentation: each sample's random draws (albumentations, ``random``, numpy, torch) are
seeded from ``(seed, epoch, index)``, so they do not depend on which worker loads the sample or
on where a run was interrupted. The loaders get their own ``torch.Generator`` so creating one
never consumes the global RNG that the model's own sampling (RPN/RoI minibatches) draws from.
One loader serves the whole ``fit`` (``detkit.engine.train_data``): its workers live across
epochs, so a small data set (bccd: 32 steps of 8 per epoch) does not pay worker start-up and an
empty prefetch queue at every epoch boundary.

Wall-clock budget: ``max_time_s`` stops training at the first iteration boundary after that many
seconds of *training* (summed over resumes and saved in the checkpoint as ``timing``); periodic
evaluation (``eval_every``) and checkpoint writes are not counted, data loading and worker start-up
are. The LR schedule is still defined by ``max_iters``: size a cosine/step schedule so that
``max_iters`` is reached within the budget. ``fit`` says which limit ended the run (``stopped_by``).

Numerical faults: a non-finite loss (on any rank) raises ``NonFiniteLossError`` before the
backward pass, leaving ``last.pt`` as the last good checkpoint, or, with ``skip_nonfinite``,
skips that step. Weights are checked finite before every checkpoint write.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detkit.engine import distributed as ddp
from detkit.engine.checkpoint import CheckpointManager, load_checkpoint, load_model_weights, make_state, restore_rng_state
from detkit.engine.evaluator import predict, proposal_kwargs, score_detections
from detkit.engine.precision import CONCRETE_AMP, autocast_context, auto_choice, resolve_amp
from detkit.engine.optim import build_optimizer, build_scheduler, load_optimizer_state
from detkit.engine.train_data import KeyedBatches, SeededSamples

log = logging.getLogger("detkit.train")


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN/inf loss or weights; the last good checkpoint was kept."""


def _to_device(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class Trainer:
    """Train a detector (the detector contract of common.md) on a ``DetectionDataset``.

    Args:
        model: the detector; train mode returns ``dict[str, Tensor]`` of scalar losses.
        train_dataset: yields ``(image (3, H, W) uint8, target)``; ``aspect_ratios()`` for grouping.
        run_dir: where ``last.pt``, ``tb/`` (TensorBoard) and results go.
        max_iters: optimiser steps in the whole run.
        batch_size: images per step **per process** (global batch = ``batch_size * world_size``).
        lr, momentum, weight_decay, no_decay_norm_bias: SGD (``detkit.engine.optim``).
        schedule, milestones, gamma, warmup_iters, warmup_factor, min_lr_factor: the LR schedule.
        clip_grad_norm: clip the gradients' global L2 norm to this (``None``: no clipping).
        amp: ``"none"``, ``"bf16"``, ``"fp16"`` (with a ``GradScaler``) or ``"auto"`` (bf16 where
            it is faster on this device: ``detkit.engine.precision.auto_choice``).
        channels_last: feed images in channels-last memory format (faster convs on GPUs).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        seed: data-order and augmentation seed.
        num_workers: data-loading processes per training process.
        checkpoint_every: write ``last.pt`` every this many iterations (0: only at the end).
        keep_every: also keep ``model_<it>.pt`` every this many iterations (0: never).
        eval_every, val_dataset, val_data: evaluate ``val_dataset`` (scored against the
            ``DetectionData`` ``val_data``) every this many iterations and log its mAP.
        skip_nonfinite: skip steps whose loss is NaN/inf instead of stopping.
        max_time_s: stop at the first iteration boundary after this many seconds of training
            (module docstring; ``None``: no limit). The schedule still follows ``max_iters``.
        config, class_names, category_ids: stored in each checkpoint (rebuilding the model later).
    """

    def __init__(
        self, *, model: nn.Module, train_dataset, run_dir: str | Path, max_iters: int, batch_size: int = 2,
        lr: float = 0.001, momentum: float = 0.9, weight_decay: float = 5e-4, no_decay_norm_bias: bool = False,
        schedule: str = "step", milestones: Sequence[int] = (), gamma: float = 0.1, warmup_iters: int = 0,
        warmup_factor: float = 0.001, min_lr_factor: float = 0.0, clip_grad_norm: float | None = None,
        amp: str = "none", channels_last: bool = False, device: str | torch.device = "auto", seed: int = 0,
        num_workers: int = 0, group_by_aspect_ratio: bool = True, size_divisible: int = 32,
        checkpoint_every: int = 0, keep_every: int = 0, eval_every: int = 0, val_dataset=None, val_data=None,
        eval_batch_size: int | None = None, log_every: int = 10, skip_nonfinite: bool = False,
        config: dict | None = None, class_names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None, progress: bool = True, tensorboard: bool = True,
        find_unused_parameters: bool = False, max_time_s: float | None = None, schedule_clock: str = "iterations",
    ):
        from detkit.data.sampler import build_batch_sampler

        if max_iters <= 0:
            raise ValueError(f"max_iters must be positive, got {max_iters}")
        if max_time_s is not None and not float(max_time_s) > 0:
            raise ValueError(f"max_time_s must be positive seconds or None, got {max_time_s}")
        if schedule_clock == "time" and max_time_s is None:
            raise ValueError("schedule_clock='time' runs the LR schedule on the wall-clock budget: set max_time_s")
        if len(train_dataset) == 0:
            raise ValueError("the training set is empty")
        self.device = device if isinstance(device, torch.device) else ddp.resolve_device(device)
        self.amp_auto = amp == "auto"  # resume then keeps the precision the run started in
        if amp != "auto":
            amp = resolve_amp(amp, self.device)  # a wrong name fails before any process group starts
        ddp.init_distributed(self.device)
        if amp == "auto":  # bf16 where it is faster here; rank 0 alone times it and decides for all
            amp, why = ddp.broadcast_object(auto_choice(self.device) if ddp.is_main() else None)
            log.info("amp=auto -> %s (%s)", "bf16" if amp == "bf16" else "float32", why)
        self.run_dir = Path(run_dir)
        self.max_iters, self.batch_size, self.seed = int(max_iters), int(batch_size), int(seed)
        self.amp, self.channels_last, self.clip_grad_norm = amp, channels_last, clip_grad_norm
        self.num_workers, self.size_divisible, self.log_every = num_workers, size_divisible, max(1, log_every)
        self.checkpoint_every, self.eval_every, self.skip_nonfinite = checkpoint_every, eval_every, skip_nonfinite
        self.val_dataset, self.val_data = val_dataset, val_data
        self.eval_batch_size = eval_batch_size or batch_size
        self.config, self.progress, self.tensorboard = config or {}, progress, tensorboard
        self.class_names, self.category_ids = list(class_names or []), list(category_ids or [])
        self.train_dataset = train_dataset
        self.sampler = build_batch_sampler(
            train_dataset, batch_size=batch_size, shuffle=True, seed=seed, group_by_aspect_ratio=group_by_aspect_ratio,
            drop_last=False, rank=ddp.get_rank(), world_size=ddp.get_world_size(),
        )
        model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.net = model
        self.optimizer = build_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                         no_decay_norm_bias=no_decay_norm_bias)
        self.scheduler = build_scheduler(self.optimizer, max_iters=max_iters, schedule=schedule, milestones=milestones,
                                         gamma=gamma, warmup_iters=warmup_iters, warmup_factor=warmup_factor,
                                         min_factor=min_lr_factor, clock=schedule_clock)
        self.schedule_clock = schedule_clock
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.model = ddp.wrap_ddp(model, self.device, find_unused_parameters=find_unused_parameters)
        self.ckpt = CheckpointManager(self.run_dir, keep_every=keep_every)
        self.iteration, self.epoch, self.position, self.skipped = 0, 0, 0, 0
        self._saved_at = -1  # iteration of the last checkpoint written or loaded
        self.max_time_s = None if max_time_s is None else float(max_time_s)
        self.train_seconds = 0.0  # training wall time of the whole run, summed across resumes
        self._mark: float | None = None  # perf_counter() from which the running stretch is counted
        self.metrics: dict[str, Any] = {}
        self._batches_of: tuple[int, list[list[int]]] = (-1, [])
        self.history: list[dict[str, float]] = []  # per-iteration losses (for tests and summaries)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        state = make_state(model=self.net, iteration=self.iteration, epoch=self.epoch, position=self.position,
                           optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, config=self.config,
                           class_names=self.class_names, category_ids=self.category_ids, metrics=self.metrics)
        state["timing"] = {"train_seconds": float(self.train_seconds), "stopped_by": self.stopped_by()}
        state["amp"] = self.amp
        return state

    def stopped_by(self) -> str | None:
        """``"max_iters"`` or ``"max_time_s"`` when training is over, else ``None``."""
        if self.iteration >= self.max_iters:
            return "max_iters"
        if self.max_time_s is not None and self.train_seconds >= self.max_time_s:
            return "max_time_s"
        return None

    def _tick(self) -> float:
        """Add the time since the last mark to ``train_seconds`` (called at iteration boundaries)."""
        now = time.perf_counter()
        if self._mark is not None:
            self.train_seconds += now - self._mark
        self._mark = now
        return self.train_seconds

    def _time_fraction(self) -> float:
        """Training seconds / ``max_time_s``, the largest over ranks (so all agree on the LR and
        on when to stop, and none waits alone in a collective); 0 without a budget."""
        if self.max_time_s is None:
            return 0.0
        frac = self.train_seconds / self.max_time_s
        if ddp.get_world_size() > 1:
            frac = ddp.all_reduce_max(frac, self.device)
        return frac

    def _eta(self, steps_per_s: float, spent: float) -> float | None:
        """Seconds of training left: the sooner of ``max_iters`` at the current speed and the budget."""
        left = (self.max_iters - self.iteration) / steps_per_s if steps_per_s > 0 else None
        if self.max_time_s is not None:
            budget_left = max(0.0, (1.0 - spent) * self.max_time_s)
            left = budget_left if left is None else min(left, budget_left)
        return left

    def _out_of_time(self) -> bool:
        """The budget is spent."""
        return self.max_time_s is not None and self._time_fraction() >= 1.0

    def save(self) -> Path | None:
        """Write ``last.pt`` on the main process (weights checked finite first)."""
        if not _weights_finite(self.net):
            raise NonFiniteLossError(
                f"weights became non-finite by iteration {self.iteration}; not overwriting {self.ckpt.last} "
                "(the last good checkpoint is kept); lower the learning rate or enable gradient clipping")
        path = self.ckpt.save(self.state()) if ddp.is_main() else None
        self._saved_at = self.iteration
        ddp.barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Restore everything ``state()`` holds (module docstring)."""
        ckpt = load_checkpoint(path)
        load_model_weights(self.net, ckpt["model"], source=str(path))
        if ckpt.get("optimizer") is not None:
            load_optimizer_state(self.optimizer, ckpt["optimizer"])
        for name, obj in (("scheduler", self.scheduler), ("scaler", self.scaler)):
            if ckpt.get(name) is not None:
                obj.load_state_dict(ckpt[name])
        self.iteration, self.epoch, self.position = int(ckpt["iteration"]), int(ckpt["epoch"]), int(ckpt["position"])
        self.metrics = dict(ckpt.get("metrics") or {})
        self.train_seconds = float((ckpt.get("timing") or {}).get("train_seconds", 0.0))
        if self.amp_auto and ckpt.get("amp") in CONCRETE_AMP and ckpt["amp"] != self.amp:
            # amp=auto is timed in each process; a resumed run keeps the precision it started in.
            log.info("amp=auto: %s continues in %s as it started", path, ckpt["amp"])
            self.amp = ckpt["amp"]
        self._saved_at = self.iteration
        if "rng" in ckpt:
            restore_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._batches_of[0] != epoch:  # one list per epoch, shared by the two walks of _schedule
            self.sampler.set_epoch(epoch)
            self._batches_of = (epoch, [list(b) for b in self.sampler])
        return self._batches_of[1]

    def _schedule(self, epoch: int, position: int):
        """Every batch from ``(epoch, position)`` on, across epochs: ``(epoch, position, indices)``.
        Skipped batches load no image."""
        while True:
            batches = self._epoch_batches(epoch)
            if not batches:
                raise ValueError("the batch sampler gave no batch for an epoch (is the training set empty?)")
            for pos in range(position, len(batches)):
                yield epoch, pos, batches[pos]
            epoch, position = epoch + 1, 0

    def _loader(self, epoch: int, position: int) -> DataLoader:
        """One loader for the rest of the run: its workers live across epochs, so a small data set
        does not pay worker start-up and an empty prefetch queue at every epoch boundary."""
        from detkit.data.dataset import collate_detections

        return DataLoader(
            SeededSamples(self.train_dataset), batch_sampler=KeyedBatches(self._schedule(epoch, position), self.seed),
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate_detections, size_divisible=self.size_divisible),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed + epoch),
        )

    # ------------------------------------------------------------------ loop
    def _step(self, batch, targets) -> dict[str, float] | None:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
        targets = _to_device(targets, self.device)
        with autocast_context(self.device, self.amp):
            losses = self.model(batch, targets, **proposal_kwargs(targets))
        if not isinstance(losses, dict) or not losses:
            raise TypeError(f"in train mode the model must return a dict of losses, got {type(losses).__name__}")
        total = sum(v.float() for v in losses.values())
        # One device-to-host copy for all terms (a single sync per step, needed by the finite check).
        read = torch.stack([*(v.detach().float().reshape(()) for v in losses.values()), total.detach()]).tolist()
        values = dict(zip([*losses, "loss"], read))
        if ddp.all_reduce_max(0.0 if math.isfinite(values["loss"]) else 1.0, self.device) > 0:
            self.optimizer.zero_grad(set_to_none=True)
            terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            if not self.skip_nonfinite:
                kept = self.ckpt.last if self.ckpt.exists() else "none written yet"
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {self.iteration + 1} ({terms}); training stopped, last good "
                    f"checkpoint kept: {kept}. Lower the learning rate, enable clip_grad_norm, or set "
                    "skip_nonfinite=true to skip such steps")
            self.skipped += 1
            log.warning("skipping step %d: non-finite loss (%s)", self.iteration + 1, terms)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return values

    def evaluate(self) -> dict[str, Any]:
        """mAP of ``val_dataset`` (all ranks predict; scores identical everywhere)."""
        dets = predict(self.model, self.val_dataset, device=self.device, batch_size=self.eval_batch_size,
                       amp=self.amp, channels_last=self.channels_last, size_divisible=self.size_divisible,
                       progress=self.progress, desc=f"val @{self.iteration}")
        return score_detections(dets, self.val_data, coco=False)

    def fit(self, *, resume: bool = False) -> dict[str, Any]:
        """Train to ``max_iters`` (continuing from ``last.pt`` with ``resume``); returns a summary."""
        if resume and self.ckpt.exists():
            self.load(self.ckpt.last)
            log.info("resumed from %s at iteration %d (epoch %d, batch %d)", self.ckpt.last, self.iteration,
                     self.epoch, self.position)
        elif resume:
            log.info("resume requested but %s does not exist: starting from scratch", self.ckpt.last)
        main = ddp.is_main()
        writer = None
        if main and self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.iteration + 1)
        imgs_per_step = self.batch_size * ddp.get_world_size()
        bar = tqdm(total=self.max_iters, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True,
                   disable=not (self.progress and main))
        start_iter, t_last, rate = self.iteration, time.perf_counter(), None
        self.net.train()
        self._mark = time.perf_counter()
        redirect = contextlib.ExitStack()
        if not bar.disable:  # console log lines go above the bar, not through it
            redirect.enter_context(logging_redirect_tqdm())
        try:
            # Two walks of the same schedule: the loader's (which runs ahead by its prefetch) and the
            # loop's, which says where each consumed batch sits for the checkpoint.
            where = self._schedule(self.epoch, self.position)
            done = self.iteration >= self.max_iters or self._out_of_time()
            loader = self._loader(self.epoch, self.position) if not done else ()
            for (batch, targets), (epoch, pos, _) in zip(loader, where):
                values = self._step(batch, targets)
                self._tick()
                spent = self._time_fraction()  # one collective per step under DDP, used twice
                if self.schedule_clock == "time":  # the next LR follows the spent budget too
                    for schedule in self.scheduler.lr_lambdas:
                        schedule.time_fraction = spent
                self.scheduler.step()
                self.iteration += 1
                self.epoch, self.position = epoch, pos + 1
                now = time.perf_counter()
                inst = imgs_per_step / max(now - t_last, 1e-9)
                rate, t_last = inst if rate is None else 0.9 * rate + 0.1 * inst, now
                lr = self.optimizer.param_groups[0]["lr"]
                if values is not None:
                    self.history.append(values)
                    if self.iteration % self.log_every == 0 or self.iteration == start_iter + 1:
                        shown = ddp.all_reduce_mean(values, self.device)
                        bar.set_postfix({**{k: f"{v:.3f}" for k, v in shown.items()}, "lr": f"{lr:.2e}",
                                         "img/s": f"{rate:.1f}"}, refresh=False)
                        if main:  # the same as a line: train.log, and the console without a bar
                            log.info("%s", _progress_line(self.iteration, self.max_iters, shown, lr, rate,
                                                          self._eta(rate / imgs_per_step, spent)))
                        if writer is not None:
                            for k, v in shown.items():
                                writer.add_scalar(f"train/{k}", v, self.iteration)
                            writer.add_scalar("train/lr", lr, self.iteration)
                            writer.add_scalar("train/img_per_s", rate, self.iteration)
                bar.update(1)
                if self.eval_every and self.val_dataset is not None and self.iteration % self.eval_every == 0:
                    self._log_eval(writer)
                    self._mark = time.perf_counter()  # evaluation time is not training time
                if self.checkpoint_every and self.iteration % self.checkpoint_every == 0:
                    self.save()
                    self._mark = time.perf_counter()  # nor is writing the checkpoint
                if self.iteration >= self.max_iters or (self.max_time_s is not None and spent >= 1.0):
                    break
            self._tick()
            self._mark = None
            if self.stopped_by() == "max_time_s":
                log.info("time budget max_time_s=%g spent after %.1f s of training, at iteration %d of %d",
                         self.max_time_s, self.train_seconds, self.iteration, self.max_iters)
            if self._saved_at != self.iteration:
                self.save()
        finally:
            self._mark = None
            redirect.close()
            bar.close()
            if writer is not None:
                writer.close()
        images = self.iteration * imgs_per_step
        return {"iteration": self.iteration, "epoch": self.epoch, "skipped_steps": self.skipped,
                "checkpoint": str(self.ckpt.last), "metrics": self.metrics,
                "train_seconds": self.train_seconds, "stopped_by": self.stopped_by() or "max_iters",
                "train_images_per_second": images / self.train_seconds if self.train_seconds > 0 else None}

    def _log_eval(self, writer) -> None:
        scores = self.evaluate()
        self.metrics = {"iteration": self.iteration, "val": scores}
        m07, m12 = scores["voc07"]["mAP"], scores["voc12"]["mAP"]
        if ddp.is_main():
            log.info("iter %d: val mAP VOC07 %s / VOC12 %s", self.iteration, m07, m12)
            if writer is not None:
                writer.add_scalar("val/mAP_voc07", m07 if m07 is not None else float("nan"), self.iteration)
                writer.add_scalar("val/mAP_voc12", m12 if m12 is not None else float("nan"), self.iteration)


def _progress_line(iteration: int, max_iters: int, losses: dict[str, float], lr: float, img_per_s: float,
                   eta_s: float | None) -> str:
    """One log line of training progress, e.g. ``iter 40/300  loss 1.234 (rpn_cls 0.2 ...)  lr ...``;
    ``losses`` are a step's values (``_step``): each term and their sum ``"loss"``."""
    terms = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "loss")
    eta = "?" if eta_s is None else time.strftime("%H:%M:%S", time.gmtime(eta_s))
    return (f"iter {iteration}/{max_iters}  loss {losses['loss']:.3f} ({terms})  lr {lr:.2e}  "
            f"{img_per_s:.1f} img/s  eta {eta}")
