"""``torch.compile`` of a detector's heavy parts, in place (issue 7, "torch.compile of the trunk and
heads").

Only the parts with fixed, tensor-only work are compiled — the trunk's convolutions, the RPN's
conv head, the region head and the predictor — each with ``nn.Module.compile``, which compiles the
module's own call and leaves the module, its parameters and its ``state_dict`` keys as they were:
checkpoints written from a compiled model load into an uncompiled one and back. The data-dependent
glue around them (proposal NMS, sampling, post-processing) stays eager.

Parts (dotted paths on the detector; a path a method lacks is skipped with a log line):

* ``trunk``: ``backbone.trunk`` (shared conv features);
* ``rpn``: ``rpn.head`` (3x3 conv + objectness / delta convs; Faster R-CNN only);
* ``region_head``: ``roi_head.box_head`` (= ``backbone.region_head`` in Fast/Faster R-CNN; R-CNN
  and SPPNet use ``backbone.region_head`` directly) and ``roi_head.predictor``.

In inference the region head sees a different number of regions per call (only the valid
proposals are pooled); inductor recompiles once for a second size and then treats that dimension
as dynamic (``dynamic=None``), or pass ``dynamic=True`` from the start.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

log = logging.getLogger(__name__)

# Part name -> dotted paths tried on the detector, in order; the same module is compiled once.
PARTS: dict[str, tuple[str, ...]] = {
    "trunk": ("backbone.trunk",),
    "rpn": ("rpn.head",),
    "region_head": ("roi_head.box_head", "backbone.region_head", "roi_head.predictor"),
}
# torch.compile's modes (None = "default").
MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompileError(ValueError):
    """Bad ``compile_model`` settings (unknown part, mode or backend)."""


def _find(model: nn.Module, path: str) -> nn.Module | None:
    obj: object = model
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def compile_model(model: nn.Module, *, mode: str | None = None, backend: str = "inductor",
                  dynamic: bool | None = None,
                  parts: Sequence[str] = ("trunk", "rpn", "region_head")) -> nn.Module:
    """Compile the named ``parts`` of ``model`` in place with ``nn.Module.compile``; returns ``model``.

    Args:
        model: a detkit detector (any method; parts it lacks are skipped and logged).
        mode: ``torch.compile`` mode (``None``/"default", "reduce-overhead" = CUDA graphs,
            "max-autotune", "max-autotune-no-cudagraphs").
        backend: ``torch.compile`` backend ("inductor"; "eager"/"aot_eager" for debugging).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: dynamic after a shape changes).
        parts: any of :data:`PARTS`.

    Compilation itself happens lazily at the first call of each part.
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise CompileError(f"compile_model: unknown part(s) {unknown}; choose from {list(PARTS)}")
    if mode not in MODES:
        raise CompileError(f"compile_model: mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(backend, str):
        import torch._dynamo  # not imported by ``import torch`` in every version

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise CompileError(f"compile_model: unknown torch.compile backend {backend!r}; available: {known}")
    done: list[nn.Module] = []
    for part in parts:
        compiled = []
        for path in PARTS[part]:
            module = _find(model, path)
            if module is None or any(module is m for m in done):
                continue
            module.compile(mode=mode, backend=backend, dynamic=dynamic)
            done.append(module)
            compiled.append(path)
        if compiled:
            log.info("compile: %s -> %s (backend %s, mode %s, dynamic %s)", part, ", ".join(compiled),
                     backend, mode or "default", dynamic)
        else:
            log.info("compile: %s has no %s (looked for %s); not compiled", type(model).__name__, part,
                     ", ".join(PARTS[part]))
    return model


def compiled_modules(model: nn.Module) -> list[str]:
    """Names (as in ``named_modules``) of the submodules compiled by :func:`compile_model`."""
    return [name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None]
