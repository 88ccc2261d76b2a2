"""int8 static quantisation of a detector's convolutional trunk, for CPU inference.

The trunk (``backbone.trunk``: the shared conv layers, ``(N, 3, H, W) -> (N, C, H/16, W/16)``)
is most of a Faster R-CNN's CPU time on a deep network (VGG-16 at 600x1000: ~85 %). Static
quantisation runs every convolution in int8 on the CPU's integer units (AVX512-VNNI where
present): weights int8 with one scale per output channel, activations int8 with one scale per
tensor, fixed beforehand by *calibration* — running the float trunk on a few representative images
and recording each activation's range. Conv + batch norm + ReLU are fused first; the trunk takes
and returns float32, so the RPN and region head around it are unchanged.

``torch.ao.quantization``'s FX graph mode (``prepare_fx`` / ``convert_fx``, with the default
settings of torch's current quantised engine: ``x86`` on Intel and AMD CPUs) is the
implementation torch ships; upstream it is deprecated in favour of ``torchao``, so its
deprecation warnings are silenced here and a torch without it is named in the error. Layers it
cannot quantise (detkit's local response normalisation) run in float between a dequantise and a
quantise. The accuracy cost depends on the model and the calibration images: measure it
(docs/performance.md has it for the CPU preset's checkpoints).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from detkit.backbones.lrn import LocalResponseNorm


@torch.no_grad()
def quantize_trunk(model: nn.Module, calibration: Iterable[Tensor]) -> int:
    """Replace ``model.backbone.trunk`` by an int8 version calibrated on ``calibration``; CPU only.

    Args:
        model: a detector with ``backbone.trunk`` run on whole images (Fast / Faster R-CNN,
            SPPNet; not R-CNN, whose trunk sees warped regions), in eval mode after this call;
            batch norms may be folded already (``fold_batch_norms``).
        calibration: trunk inputs, each ``(N, 3, H, W)`` float, normalised as the detector's
            ``preprocess`` returns them (``model.preprocess(batch)[0]``): a handful of real images
            of the kind the model will see (8-32 are typical).

    Returns:
        the number of convolutions now running in int8.

    Raises:
        ValueError: no ``backbone.trunk``, R-CNN, a trunk off the CPU, already quantised, not
            traceable by ``torch.fx``, or no calibration input.
        RuntimeError: this torch has no ``torch.ao.quantization`` FX graph mode.
    """
    trunk = getattr(getattr(model, "backbone", None), "trunk", None)
    name = type(model).__name__
    if not isinstance(trunk, nn.Module):
        raise ValueError(f"quantize_trunk: {name} has no backbone.trunk to quantise")
    if getattr(model, "trunk_on_regions", False):
        raise ValueError(f"quantize_trunk: {name}'s trunk runs on warped regions, not the whole images "
                         "it would be calibrated on")
    if isinstance(trunk, torch.fx.GraphModule) and _int8_convs(trunk):
        raise ValueError(f"quantize_trunk: {name}'s trunk is already quantised")
    devices = {p.device.type for p in trunk.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"quantize_trunk: int8 static quantisation runs on the CPU; {name}'s trunk is on "
                         f"{sorted(devices)}")
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as e:  # removed from a future torch
        raise RuntimeError(f"quantize_trunk: this torch ({torch.__version__}) has no torch.ao.quantization "
                           f"FX graph mode: {e}") from None
    model.eval()
    inputs = iter(calibration)
    first = next(inputs, None)
    if first is None:
        raise ValueError("quantize_trunk: no calibration input (give a few preprocessed images)")
    with warnings.catch_warnings():
        # torch.ao's deprecation notices (torchao is the successor) and its observers' reduce_range note
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range")
        try:
            graph = _without_identities(trunk)
            prepared = prepare_fx(graph, get_default_qconfig_mapping(torch.backends.quantized.engine), (first,),
                                  prepare_custom_config=PrepareCustomConfig().set_non_traceable_module_classes(
                                      [LocalResponseNorm]))
        except Exception as e:  # torch.fx raises many types for untraceable Python control flow
            raise ValueError(f"quantize_trunk: {name}'s trunk ({type(trunk).__name__}) cannot be traced by "
                             f"torch.fx for static quantisation: {e}") from None
        prepared(first)
        for x in inputs:
            prepared(x)
        quantized = convert_fx(prepared)
    model.backbone.trunk = quantized
    return _int8_convs(quantized)


def _without_identities(trunk: nn.Module) -> torch.fx.GraphModule:
    """``trunk`` traced, with its ``nn.Identity`` calls (folded batch norms) cut out of the graph,
    so conv + ReLU fuse into one int8 op."""
    gm = torch.fx.GraphModule(trunk, _Tracer().trace(trunk))
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer with detkit's LRN kept as one call (its forward branches on the input's rank)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LocalResponseNorm) or super().is_leaf_module(m, module_qualified_name)


def _int8_convs(module: nn.Module) -> int:
    return sum(1 for m in module.modules() if type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")
               or type(m).__module__.startswith("torch.ao.nn.quantized.modules.conv"))
