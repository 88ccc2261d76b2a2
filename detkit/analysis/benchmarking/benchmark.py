"""Speed of a detector: training images/s, inference latency and throughput, per-phase breakdown.

Every number is a wall-clock time of whole model calls on random inputs already on the device
(data loading excluded), after ``warmup`` untimed calls, over ``repeats`` timed calls; each is
reported as ``{"median", "q1", "q3", "min", "max", "n"}`` in milliseconds.

* **Clock**: CUDA events on a GPU (recorded on the stream, so timing adds no host
  synchronisation inside the step; one ``torch.cuda.synchronize`` after each call), and
  ``time.perf_counter`` on the CPU.
* **Phases** of one call (``preprocess``, ``trunk``, ``proposals``, ``region_head`` = RoI
  pooling + region head + predictor, ``postprocess`` in inference; ``roi_sampling``,
  ``backward``, ``optimizer`` in training) are measured in the same calls as the total, by
  forward hooks on the detector's submodules and by wrapping bound methods on the instance
  (:class:`PhaseTimer`) — the model files carry no timing code. ``other`` is the rest of the
  call (target padding, Python glue, losses outside the hooked parts). Phase maps for detkit's
  detectors are :data:`DETKIT_PHASES`; :mod:`detkit.analysis.benchmarking.torchvision_compare` has
  torchvision's.
* **Memory**: ``torch.cuda.max_memory_allocated`` (reset before each measurement) on a GPU; on
  the CPU the process's peak resident set size, reset through ``/proc/self/clear_refs`` where
  Linux allows it, otherwise ``resource.getrusage`` (a high-water mark of the whole process, so
  later measurements include earlier ones: ``memory_kind`` says which).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

# machine_info, git_commit, COUNTERS, summarize and BenchmarkError are part of this module's API too.
# Phase maps (DETKIT_PHASES for Fast/Faster R-CNN, phase_map(model) for every method) live with
# the other per-method knowledge in detkit.analysis.benchmarking.method_inputs.
from detkit.analysis.benchmarking.method_inputs import DETKIT_PHASES, phase_map  # noqa: F401
from detkit.analysis.benchmarking.machine import current_memory_mb, peak_memory_mb, reset_peak_memory  # noqa: F401
from detkit.utils.provenance import git_commit, machine_info  # noqa: F401
from detkit.analysis.benchmarking.timing import COUNTERS, BenchmarkError, Clock, PhaseTimer, summarize  # noqa: F401
from detkit.data.batch import ImageBatch
from detkit.engine.optim import build_optimizer

PRECISIONS = ("fp32", "bf16", "fp16")
INFER_PHASES = ("preprocess", "trunk", "proposals", "region_head", "postprocess")
TRAIN_PHASES = ("preprocess", "trunk", "proposals", "roi_sampling", "region_head", "backward", "optimizer")

# ----------------------------------------------------------------------------- random inputs
def random_batch(n: int, height: int, width: int, *, device: torch.device, generator: torch.Generator,
                 size_divisible: int = 32, channels_last: bool = False) -> ImageBatch:
    """``n`` random uint8 RGB images of ``height x width``, padded like ``ImageBatch.from_images``."""
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(n)]
    batch = ImageBatch.from_images(images, size_divisible=size_divisible).to(device)
    if channels_last:
        batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
    return batch


def random_boxes(count: int, height: int, width: int, *, generator: torch.Generator,
                 min_side: float = 16.0) -> Tensor:
    """``(count, 4)`` float32 xyxy boxes inside the image with sides >= ``min_side`` pixels."""
    lo = torch.rand(count, 2, generator=generator) * torch.tensor([width - min_side, height - min_side])
    side = min_side + torch.rand(count, 2, generator=generator) * (
        torch.tensor([width, height]) - min_side - lo)
    return torch.cat((lo, lo + side), dim=1)


def random_targets(n: int, height: int, width: int, *, num_classes: int, boxes_per_image: int,
                   device: torch.device, generator: torch.Generator) -> list[dict]:
    """Training targets (detector contract) with random boxes and labels in ``0..K-1``."""
    return [{"boxes": random_boxes(boxes_per_image, height, width, generator=generator).to(device),
             "labels": torch.randint(0, num_classes, (boxes_per_image,), generator=generator).to(device)}
            for _ in range(n)]


# ----------------------------------------------------------------------------- measurements
def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``precision`` in ``PRECISIONS`` (fp32: disabled)."""
    if precision not in PRECISIONS:
        raise BenchmarkError(f"benchmark.py: precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def takes_proposals(model: nn.Module) -> bool:
    """Whether the detector's ``forward`` takes ``proposals=`` (R-CNN, SPPNet, Fast R-CNN)."""
    return "proposals" in inspect.signature(model.forward).parameters


def inference_step(model: nn.Module, batch: ImageBatch, *, precision: str,
                   proposals: list[Tensor] | None = None) -> Callable[[PhaseTimer], list[dict]]:
    """One eval-mode call ``model(batch)`` under ``torch.inference_mode`` and autocast."""
    device = next(model.parameters()).device
    kwargs = {"proposals": proposals} if proposals is not None and takes_proposals(model) else {}

    def step(_timer: PhaseTimer) -> list[dict]:
        model.eval()
        with torch.inference_mode(), autocast(device, precision):
            return model(batch, **kwargs)
    return step


def training_step(model: nn.Module, batch: ImageBatch, targets: list[dict], *, precision: str,
                  proposals: list[Tensor] | None = None, lr: float = 1e-5,
                  detkit_optimizer: bool = True) -> Callable[[PhaseTimer], None]:
    """One training step: forward (train mode) + backward + SGD step (momentum 0.9, wd 5e-4).

    ``detkit_optimizer``: the SGD of detkit's trainer (``detkit.engine.optim.build_optimizer``,
    fused where PyTorch has it); ``False``: ``torch.optim.SGD`` with its defaults, as
    torchvision's reference training scripts build it. fp16 uses a ``GradScaler``. The learning
    rate is tiny so that random data cannot blow the weights up while they are measured.
    """
    device = next(model.parameters()).device
    if detkit_optimizer:
        optimizer = build_optimizer(model, lr=lr, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                    momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    kwargs = {"proposals": proposals} if proposals is not None and takes_proposals(model) else {}

    def step(timer: PhaseTimer) -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            losses = model(batch, targets, **kwargs)
        loss = sum(losses.values())
        with timer.extra("backward"):
            scaler.scale(loss).backward()
        with timer.extra("optimizer"):
            scaler.step(optimizer)
            scaler.update()
    return step


def measure(entries: dict[str, tuple[nn.Module, dict[str, list[str]], Callable]], *, warmup: int,
            repeats: int, phase_names: Sequence[str], batch_size: int) -> dict[str, dict]:
    """Time the ``step`` of each ``name -> (model, phase map, step)``, interleaved.

    All models are warmed up first; then each repeat runs every model once, in alternating
    order, so load changes on a shared machine hit all of them alike. Peak memory comes from one extra call per
    model after a reset (not from the interleaved calls, whose peaks would mix).

    Returns per name: ``total_ms`` and ``phases_ms`` (``phase_names`` + ``other`` = total minus
    the phases, per call) as :func:`summarize` dicts, ``phase_sources``, ``batch_size``,
    ``images_per_s`` (batch size / median total), ``peak_memory_mb`` (of one extra call),
    ``baseline_memory_mb`` (in use just before that call: weights, inputs, on the CPU the whole
    process's resident set, so the call's own need is the difference), ``memory_kind``,
    ``rois_per_image`` (regions through the region head, mean) and, for inference,
    ``detections_per_image`` (mean: how much post-processing work there was).
    """
    runs = {}
    with contextlib.ExitStack() as stack:
        for name, (model, phases, step) in entries.items():
            device = next(model.parameters()).device
            clock = Clock(device)
            timer = stack.enter_context(PhaseTimer(model, phases, clock))
            runs[name] = (step, timer, clock, device)
        for step, timer, clock, _ in runs.values():
            for _ in range(warmup):
                timer.start()
                step(timer)
            clock.sync()
        samples = {name: {"total": [], "outputs": [], "rois": [], **{p: [] for p in phase_names}}
                   for name in runs}
        for r in range(repeats):
            # Alternate the order (ABBA...): whoever runs first is not always the one that
            # meets a cold cache or a neighbour's burst of load.
            for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                step, timer, clock, _ = runs[name]
                timer.start()
                t0 = clock.mark()
                out = step(timer)
                t1 = clock.mark()
                clock.sync()
                spans = timer.totals_ms()
                s = samples[name]
                s["total"].append(clock.ms(t0, t1))
                s["outputs"].append(out)
                s["rois"].append(timer.rois)
                for p in phase_names:
                    s[p].append(spans.get(p, 0.0))
        results = {}
        for name, (step, timer, clock, device) in runs.items():
            kind = reset_peak_memory(device)
            baseline = current_memory_mb(device)
            timer.start()
            step(timer)
            clock.sync()
            s = samples[name]
            other = [t - sum(s[p][i] for p in phase_names) for i, t in enumerate(s["total"])]
            total = summarize(s["total"])
            res = {"total_ms": total,
                   "phases_ms": {p: summarize(s[p]) for p in phase_names} | {"other": summarize(other)},
                   "phase_sources": {p: timer.found.get(p, []) for p in phase_names},
                   "batch_size": batch_size, "images_per_s": batch_size / (total["median"] / 1000.0),
                   "peak_memory_mb": peak_memory_mb(device, kind), "memory_kind": kind,
                   "baseline_memory_mb": baseline,
                   "rois_per_image": sum(s["rois"]) / (len(s["rois"]) * batch_size)}
            if s["outputs"] and s["outputs"][0] is not None:
                res["detections_per_image"] = (sum(len(d["boxes"]) for out in s["outputs"] for d in out)
                                               / (len(s["outputs"]) * batch_size))
            results[name] = res
    return results


def benchmark_detectors(models: dict[str, tuple[nn.Module, dict[str, list[str]]]], *,
                        input_hw: tuple[int, int], batch_size: int = 2, mode: str = "both",
                        precision: str | dict[str, str] = "fp32", warmup: int = 3, repeats: int = 10, num_classes: int,
                        channels_last: bool = False, num_proposals: int = 2000, boxes_per_image: int = 4,
                        seed: int = 0) -> dict[str, dict]:
    """Measure detectors (each already on its device) on the same random ``input_hw`` images.

    Args:
        models: name -> ``(detector, phase map)`` (``DETKIT_PHASES`` for detkit's detectors).
        batch_size: training batch and inference-throughput batch (latency is at batch 1).
        precision: autocast for every model, or name -> precision (e.g. detkit in bf16 beside
            torchvision in fp32, as ``detkit benchmark --fast`` compares them).
        num_proposals: random given proposals per image for detectors that take them (R-CNN,
            SPPNet, Fast R-CNN: the same boxes for all, made before timing, so the proposal
            search is excluded and their ``proposals`` phase is 0).

    Returns name -> ``{"train": ..., "infer_latency": ..., "infer_throughput": ...}`` (what
    ``mode`` asks for), each as described in :func:`measure`.
    """
    h, w = (int(v) for v in input_hw)
    if h < 32 or w < 32:
        raise BenchmarkError(f"benchmark.py: input must be at least 32x32 pixels, got {h}x{w}")
    if mode not in ("train", "infer", "both"):
        raise BenchmarkError(f"benchmark.py: mode must be train, infer or both, got {mode!r}")
    if batch_size < 1 or repeats < 1 or warmup < 0 or num_proposals < 1:
        raise BenchmarkError(f"benchmark.py: need batch >= 1, repeats >= 1, warmup >= 0, proposals >= 1 "
                             f"(got {batch_size}, {repeats}, {warmup}, {num_proposals})")
    precisions = {name: precision if isinstance(precision, str) else precision.get(name, "fp32") for name in models}
    for p in precisions.values():
        autocast(torch.device("cpu"), p)  # validates precision
    device = next(next(iter(models.values()))[0].parameters()).device
    gen = torch.Generator().manual_seed(seed)
    for m, _ in models.values():  # R-CNN measures its regions' memory once: not part of any timed call
        if callable(getattr(m, "regions_per_batch", None)):
            m.regions_per_batch(device)

    def inputs(n: int):
        batch = random_batch(n, h, w, device=device, generator=gen, channels_last=channels_last)
        return batch, [random_boxes(num_proposals, h, w, generator=gen, min_side=4.0).to(device) for _ in range(n)]

    out: dict[str, dict] = {name: {} for name in models}
    kinds = []
    if mode in ("train", "both"):
        kinds.append(("train", batch_size))
    if mode in ("infer", "both"):
        kinds += [("infer_latency", 1)] + ([("infer_throughput", batch_size)] if batch_size > 1 else [])
    for kind, n in kinds:
        batch, props = inputs(n)
        if kind == "train":
            targets = random_targets(n, h, w, num_classes=num_classes, boxes_per_image=boxes_per_image,
                                     device=device, generator=gen)
            entries = {name: (m, ph, training_step(m, batch, targets, precision=precisions[name], proposals=props,
                                                   detkit_optimizer=name != "torchvision"))
                       for name, (m, ph) in models.items()}
        else:
            entries = {name: (m, ph, inference_step(m, batch, precision=precisions[name], proposals=props))
                       for name, (m, ph) in models.items()}
        phase_names = TRAIN_PHASES if kind == "train" else INFER_PHASES
        for name, res in measure(entries, warmup=warmup, repeats=repeats, phase_names=phase_names,
                                 batch_size=n).items():
            out[name][kind] = res
    if mode in ("infer", "both") and batch_size == 1:
        for res in out.values():
            res["infer_throughput"] = res["infer_latency"]
    return out


def relative_to_fastest(results: dict[str, dict], key: str = "infer_latency") -> dict[str, float]:
    """Each model's median ``key`` time over the fastest one's (1.0 = the fastest)."""
    medians = {name: res[key]["total_ms"]["median"] for name, res in results.items() if key in res}
    if not medians:
        return {}
    fastest = min(medians.values())
    return {name: ms / fastest for name, ms in medians.items()}


def benchmark_detector(model: nn.Module, *, phases: dict[str, list[str]] | None = None, **kwargs) -> dict:
    """:func:`benchmark_detectors` for one detector (phase map ``DETKIT_PHASES`` by default)."""
    return benchmark_detectors({"model": (model, DETKIT_PHASES if phases is None else phases)}, **kwargs)["model"]
