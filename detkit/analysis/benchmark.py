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
  detectors are :data:`DETKIT_PHASES`; :mod:`detkit.analysis.torchvision_compare` has
  torchvision's.
* **Memory**: ``torch.cuda.max_memory_allocated`` (reset before each measurement) on a GPU; on
  the CPU the process's peak resident set size, reset through ``/proc/self/clear_refs`` where
  Linux allows it, otherwise ``resource.getrusage`` (a high-water mark of the whole process, so
  later measurements include earlier ones: ``memory_kind`` says which).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from detkit.data.batch import ImageBatch

PRECISIONS = ("fp32", "bf16", "fp16")
INFER_PHASES = ("preprocess", "trunk", "proposals", "region_head", "postprocess")
TRAIN_PHASES = ("preprocess", "trunk", "proposals", "roi_sampling", "region_head", "backward", "optimizer")

# Dotted paths on a detkit detector; a module path is hooked, a method path is wrapped.
DETKIT_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "trunk": ["backbone.trunk"],
    "proposals": ["rpn"],
    "roi_sampling": ["roi_head.sample"],
    "region_head": ["roi_head.roi_pool", "roi_head.box_head", "roi_head.predictor"],
    "postprocess": ["roi_head.postprocess"],
    "rois": ["roi_head.predictor"],  # not a phase: counts the regions its first output has
}
COUNTERS = ("rois",)


class BenchmarkError(ValueError):
    """Bad benchmark settings (sizes, precision, counts) or a model the benchmark cannot drive."""


# ----------------------------------------------------------------------------- statistics, clock
def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), min, max and count of ``samples``."""
    xs = sorted(float(v) for v in samples)
    if not xs:
        raise BenchmarkError("benchmark.py: no samples to summarise")
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0],) * 3
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


class Clock:
    """Time stamps on ``device``: CUDA events (GPU) or ``perf_counter`` seconds (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def ms(self, start, end) -> float:
        """Milliseconds between two marks (call :meth:`sync` first on a GPU)."""
        return float(start.elapsed_time(end)) if self.cuda else (end - start) * 1000.0


def _resolve(root: object, path: str) -> tuple[object, str, object] | None:
    """``"a.b.c"`` -> ``(owner a.b, "c", value)``, or ``None`` if any part is missing."""
    owner = root
    *parents, last = path.split(".")
    for name in parents:
        owner = getattr(owner, name, None)
        if owner is None:
            return None
    value = getattr(owner, last, None)
    return None if value is None else (owner, last, value)


class PhaseTimer(contextlib.AbstractContextManager):
    """Accumulate time per phase while active: forward hooks on modules, wrappers on methods.

    Args:
        model: the detector.
        phases: phase name -> dotted paths (``DETKIT_PHASES``); paths missing from ``model`` are
            skipped (``found`` lists the ones used).
        clock: the :class:`Clock`.

    Use :meth:`start` before a call and :meth:`totals_ms` after it (and after ``clock.sync()``).
    Calls of one phase that nest (a hooked module inside another of the same phase) count once.
    The ``rois`` entry is a counter, not a phase: ``rois`` sums the first dimension of the
    hooked module's (first) output — the regions the region head ran on in the call.
    """

    def __init__(self, model: nn.Module, phases: dict[str, list[str]], clock: Clock) -> None:
        self.model, self.clock = model, clock
        self.found: dict[str, list[str]] = {name: [] for name in phases}
        self._targets = []
        for name, paths in phases.items():
            for path in paths:
                hit = _resolve(model, path)
                if hit is not None and (isinstance(hit[2], nn.Module) or callable(hit[2])):
                    self._targets.append((name, path, *hit))
                    self.found[name].append(path)
        self._handles: list = []
        self._patched: list[tuple[object, str]] = []
        self._open: dict[str, list] = {}
        self._spans: dict[str, list] = {}
        self.rois = 0

    def extra(self, name: str) -> contextlib.AbstractContextManager:
        """A phase measured around code in the benchmark loop (``backward``, ``optimizer``)."""
        self.found.setdefault(name, ["<benchmark loop>"])
        return self._span(name)

    @contextlib.contextmanager
    def _span(self, name: str):
        self._enter(name)
        try:
            yield
        finally:
            self._exit(name)

    def _enter(self, name: str) -> None:
        stack = self._open.setdefault(name, [])
        stack.append(self.clock.mark() if not stack else None)

    def _exit(self, name: str) -> None:
        start = self._open[name].pop()
        if start is not None:
            self._spans.setdefault(name, []).append((start, self.clock.mark()))

    def __enter__(self) -> "PhaseTimer":
        for name, _, owner, attr, value in self._targets:
            if name in COUNTERS and isinstance(value, nn.Module):
                self._handles.append(value.register_forward_hook(self._count))
            elif isinstance(value, nn.Module):
                self._handles.append(value.register_forward_pre_hook(lambda *_, n=name: self._enter(n)))
                self._handles.append(value.register_forward_hook(lambda *_, n=name: self._exit(n)))
            else:
                def timed(*args, _f=value, _n=name, **kwargs):
                    with self._span(_n):
                        return _f(*args, **kwargs)
                setattr(owner, attr, timed)  # instance attribute shadows the class's method
                self._patched.append((owner, attr))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for owner, attr in self._patched:
            delattr(owner, attr)
        self._handles, self._patched = [], []

    def _count(self, _module, _args, output) -> None:
        first = output[0] if isinstance(output, (tuple, list)) else output
        self.rois += int(first.shape[0])

    def start(self) -> None:
        self._open, self._spans, self.rois = {}, {}, 0

    def totals_ms(self) -> dict[str, float]:
        return {name: sum(self.clock.ms(a, b) for a, b in spans) for name, spans in self._spans.items()}


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


# ----------------------------------------------------------------------------- machine, memory
def machine_info(device: torch.device) -> dict:
    """CPU model, cores, threads, GPU name, library versions (the context of every number)."""
    import torchvision

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "device": str(device), "gpu": None, "cuda": torch.version.cuda}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def git_commit(repo: str | os.PathLike | None = None) -> dict:
    """``{"commit", "dirty"}`` of the checkout (read-only git calls; ``None`` outside git)."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _reset_peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_memory_allocated"
    try:  # Linux: "5" resets VmHWM (peak RSS) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return "rss_peak_since_reset"
    except OSError:
        return "rss_peak_of_process"


def _proc_status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (NaN where absent)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def _current_memory_mb(device: torch.device) -> float:
    """Memory in use now: CUDA tensors allocated, or the process's resident set on the CPU."""
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _proc_status_mb("VmRSS")


def _peak_memory_mb(device: torch.device, kind: str) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if kind == "rss_peak_since_reset":
        return _proc_status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ----------------------------------------------------------------------------- measurements
def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``precision`` in ``PRECISIONS`` (fp32: disabled)."""
    if precision not in PRECISIONS:
        raise BenchmarkError(f"benchmark.py: precision must be one of {PRECISIONS}, got {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision != "fp32")


def takes_proposals(model: nn.Module) -> bool:
    """Whether the detector's ``forward`` takes ``proposals=`` (Fast R-CNN: given proposals)."""
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
                  proposals: list[Tensor] | None = None, lr: float = 1e-5) -> Callable[[PhaseTimer], None]:
    """One training step: forward (train mode) + backward + SGD step (momentum 0.9, wd 5e-4).

    fp16 uses a ``GradScaler``. The learning rate is tiny so that random data cannot blow the
    weights up while they are measured.
    """
    device = next(model.parameters()).device
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
            kind = _reset_peak_memory(device)
            baseline = _current_memory_mb(device)
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
                   "peak_memory_mb": _peak_memory_mb(device, kind), "memory_kind": kind,
                   "baseline_memory_mb": baseline,
                   "rois_per_image": sum(s["rois"]) / (len(s["rois"]) * batch_size)}
            if s["outputs"] and s["outputs"][0] is not None:
                res["detections_per_image"] = (sum(len(d["boxes"]) for out in s["outputs"] for d in out)
                                               / (len(s["outputs"]) * batch_size))
            results[name] = res
    return results


def benchmark_detectors(models: dict[str, tuple[nn.Module, dict[str, list[str]]]], *,
                        input_hw: tuple[int, int], batch_size: int = 2, mode: str = "both",
                        precision: str = "fp32", warmup: int = 3, repeats: int = 10, num_classes: int,
                        channels_last: bool = False, num_proposals: int = 2000, boxes_per_image: int = 4,
                        seed: int = 0) -> dict[str, dict]:
    """Measure detectors (each already on its device) on the same random ``input_hw`` images.

    Args:
        models: name -> ``(detector, phase map)`` (``DETKIT_PHASES`` for detkit's detectors).
        batch_size: training batch and inference-throughput batch (latency is at batch 1).
        num_proposals: random given proposals per image for detectors that take them (Fast
            R-CNN; made before timing, so their ``proposals`` phase is 0).

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
    autocast(torch.device("cpu"), precision)  # validates precision
    device = next(next(iter(models.values()))[0].parameters()).device
    gen = torch.Generator().manual_seed(seed)

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
            entries = {name: (m, ph, training_step(m, batch, targets, precision=precision, proposals=props))
                       for name, (m, ph) in models.items()}
        else:
            entries = {name: (m, ph, inference_step(m, batch, precision=precision, proposals=props))
                       for name, (m, ph) in models.items()}
        phase_names = TRAIN_PHASES if kind == "train" else INFER_PHASES
        for name, res in measure(entries, warmup=warmup, repeats=repeats, phase_names=phase_names,
                                 batch_size=n).items():
            out[name][kind] = res
    if mode in ("infer", "both") and batch_size == 1:
        for res in out.values():
            res["infer_throughput"] = res["infer_latency"]
    return out


def benchmark_detector(model: nn.Module, *, phases: dict[str, list[str]] | None = None, **kwargs) -> dict:
    """:func:`benchmark_detectors` for one detector (phase map ``DETKIT_PHASES`` by default)."""
    return benchmark_detectors({"model": (model, DETKIT_PHASES if phases is None else phases)}, **kwargs)["model"]
