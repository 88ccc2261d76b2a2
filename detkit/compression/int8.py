"""int8 dynamic quantisation of a detector's fully connected layers, for CPU inference.

Every ``nn.Linear`` of the detector — the region head's fc6/fc7 and the box predictor's classifier
and regressor (the trunk, RPN and OverFeat's fully convolutional head have none) — is replaced by a
dynamically quantised one: its weights are stored as int8 (one scale per tensor), each call
quantises its input from the range it observes, and the product runs in int8 on the CPU's
integer units (AVX512-VNNI where present) with float32 output. The region head is about half of a
Faster R-CNN's CPU time at 300 RoIs, fc6 most of it.

``torch.ao.quantization.quantize_dynamic`` is the implementation torch ships (no hand-written
kernels); upstream it is deprecated in favour of ``torchao``, so its deprecation warnings are
silenced here and a torch without it is named in the error.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def has_linear_layers(model: nn.Module) -> bool:
    """Whether ``model`` has an ``nn.Linear`` (float) layer to quantise."""
    return any(type(m) is nn.Linear for m in model.modules())


def int8_in_fast(model: nn.Module) -> bool:
    """Whether ``--fast`` on the CPU quantises ``model``'s fc layers: it has some, and its class does
    not set ``fast_int8 = False`` (R-CNN does: docs/performance.md, "R-CNN on the CPU")."""
    return has_linear_layers(model) and bool(getattr(model, "fast_int8", True))


def quantize_linear_layers(model: nn.Module) -> list[str]:
    """Quantise every ``nn.Linear`` of ``model`` in place (module docstring); eval mode, CPU only.

    Returns:
        the names of the quantised layers.

    Raises:
        ValueError: ``model`` has no ``nn.Linear`` layer, or has parameters off the CPU.
        RuntimeError: this torch has no ``torch.ao.quantization.quantize_dynamic``.
    """
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    if not names and any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise ValueError(f"quantize_linear_layers: {type(model).__name__}'s fc layers are already quantised")
    if not names:
        raise ValueError(f"quantize_linear_layers: {type(model).__name__} has no nn.Linear layer to quantise "
                         "(a fully convolutional head, as OverFeat's, has none)")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"quantize_linear_layers: int8 dynamic quantisation runs on the CPU; "
                         f"{type(model).__name__} is on {sorted(devices)}")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # removed from a future torch
        raise RuntimeError(f"quantize_linear_layers: this torch ({torch.__version__}) has no "
                           f"torch.ao.quantization.quantize_dynamic: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices (torchao is the successor)
        quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)
    for name in names:
        # the int8 kernels take float32 only; under bf16 autocast (--fast) a conv head hands them bf16
        model.get_submodule(name).register_forward_pre_hook(_float_inputs)
    return names


def _float_inputs(_module: nn.Module, args: tuple) -> tuple:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
