"""Timing of model calls for the benchmark: sample statistics, the device clock, and
:class:`PhaseTimer`, which times named phases of a call through forward hooks and wrapped methods
(so the model files carry no timing code). Used by :mod:`detkit.analysis.benchmarking.benchmark`.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

COUNTERS = ("rois",)


class BenchmarkError(ValueError):
    """Bad benchmark settings (sizes, precision, counts) or a model the benchmark cannot drive."""


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
    A phase is *self time*: a span of another phase nested inside it (R-CNN's ``detect`` =
    postprocess calling ``region_features`` = region head) is subtracted from the enclosing one,
    so phases never count the same time twice and ``other`` stays >= 0.
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
                if hit is not None and name in COUNTERS and not isinstance(hit[2], nn.Module):
                    raise BenchmarkError(f"benchmark.py: counter {name!r} needs a module path (a forward "
                                         f"hook sees its output), got the method {path!r}")
                if hit is not None and (isinstance(hit[2], nn.Module) or callable(hit[2])):
                    self._targets.append((name, path, *hit))
                    self.found[name].append(path)
        self._handles: list = []
        self._patched: list[tuple[object, str]] = []
        self._open: dict[str, list] = {}
        self._spans: dict[str, list] = {}
        self._nested: dict[str, list] = {}  # spans of other phases inside this one (subtracted)
        self._active: list[str] = []  # phases open now, outermost first
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
        if stack[-1] is not None:
            self._active.append(name)

    def _exit(self, name: str) -> None:
        start = self._open[name].pop()
        if start is not None:
            span = (start, self.clock.mark())
            self._spans.setdefault(name, []).append(span)
            if self._active and self._active[-1] == name:
                self._active.pop()
            if self._active:  # the enclosing phase does not count this span again
                self._nested.setdefault(self._active[-1], []).append(span)

    def __enter__(self) -> "PhaseTimer":
        for name, _, owner, attr, value in self._targets:
            if name in COUNTERS:
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
        """Regions the hooked head ran on: rows of a ``(R, D)`` output, or every location
        ``N * h * w`` of a dense ``(N, C, h, w)`` map (OverFeat's classifier: one window each)."""
        first = output[0] if isinstance(output, (tuple, list)) else output
        self.rois += int(first.shape[0]) * (int(first.shape[-2] * first.shape[-1]) if first.dim() == 4 else 1)

    def start(self) -> None:
        self._open, self._spans, self._nested, self._active, self.rois = {}, {}, {}, [], 0

    def totals_ms(self) -> dict[str, float]:
        """Self time per phase: its spans minus the other phases' spans nested in them."""
        def total(spans) -> float:
            return sum(self.clock.ms(a, b) for a, b in spans)
        return {name: total(spans) - total(self._nested.get(name, ())) for name, spans in self._spans.items()}
