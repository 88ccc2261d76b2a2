"""What the benchmark needs to know about each detection method: where its phases are, where its
proposals come from, and the test-time parts a random-weight model lacks.

The five methods split one test-time call differently (proposals, trunk, region head, post-processing); phases are mapped onto the
benchmark's ``trunk / proposals / region_head / postprocess`` (:data:`~detkit.analysis.benchmarking.benchmark.INFER_PHASES`)
as far as a method has them, through dotted paths that :class:`~detkit.analysis.benchmarking.timing.PhaseTimer`
hooks (modules) or wraps (methods). Phases are self time, so a phase map may name an outer method
(``detect``) whose nested phases are subtracted from it:

===========  =====================  ================  ===============================  ============================
method       trunk                  proposals         region_head                      postprocess
===========  =====================  ================  ===============================  ============================
R-CNN        — (runs per region)    given             warp + whole network per region  SVM scores, box regression,
                                                      (``region_features``)            per-class NMS (``detect``)
SPPNet       trunk at each scale    given             SPP + fc6-fc7 on every box       as R-CNN
             (``conv_maps``)                          (``region_features``)
OverFeat     dense passes: resize,  — (dense          FC-as-conv classifier and box    softmax, decoding, greedy
             conv layers, offset    windows)          regression net at every window   merging (``detect``)
             pooling (``dense``)
Fast R-CNN   ``backbone.trunk``     given             RoI pooling + head + predictor   ``roi_head.postprocess``
Faster R-CNN ``backbone.trunk``     RPN (``rpn``)     RoI pooling + head + predictor   ``roi_head.postprocess``
===========  =====================  ================  ===============================  ============================

"Given" proposals are the same random boxes for every proposal-taking method, made before timing:
the proposal search (selective search, seconds per image on a CPU) is excluded from all of them.
"""
from __future__ import annotations

import torch
from torch import nn

# Paths on a detkit detector (a module path is hooked, a method path is wrapped); "rois" counts
# the regions (or dense windows) the region head ran on, from the hooked module's output.
DETKIT_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "trunk": ["backbone.trunk"],
    "proposals": ["rpn"],
    "roi_sampling": ["roi_head.sample"],
    "region_head": ["roi_head.roi_pool", "roi_head.box_head", "roi_head.predictor"],
    "postprocess": ["roi_head.postprocess"],
    "rois": ["roi_head.predictor"],  # not a phase: counts the regions its first output has
}
RCNN_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "region_head": ["region_features"],
    "postprocess": ["detect"],
    "rois": ["backbone.region_head"],
}
SPPNET_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "trunk": ["conv_maps"],
    "region_head": ["region_features"],
    "postprocess": ["detect"],
    "rois": ["backbone.region_head"],
}
OVERFEAT_PHASES: dict[str, list[str]] = {
    "preprocess": ["preprocess"],
    "trunk": ["dense"],
    "region_head": ["net.classifier", "regressor"],
    "postprocess": ["detect"],
    "rois": ["net.classifier"],
}


def method_kind(model: nn.Module) -> str:
    """``"rcnn"``, ``"sppnet"``, ``"overfeat"``, ``"fast_rcnn"``, ``"faster_rcnn"`` or ``"other"``."""
    from detkit.methods.fast_rcnn import FastRCNN
    from detkit.methods.faster_rcnn import FasterRCNN
    from detkit.methods.overfeat import OverFeat
    from detkit.methods.rcnn import RCNN
    from detkit.methods.sppnet import SPPNet

    for cls, name in ((SPPNet, "sppnet"), (RCNN, "rcnn"), (OverFeat, "overfeat"), (FastRCNN, "fast_rcnn"),
                      (FasterRCNN, "faster_rcnn")):
        if isinstance(model, cls):
            return name
    return "other"


def phase_map(model: nn.Module) -> dict[str, list[str]]:
    """The phase map of ``model``'s method (``DETKIT_PHASES`` for Fast/Faster R-CNN and others)."""
    return {"rcnn": RCNN_PHASES, "sppnet": SPPNET_PHASES,
            "overfeat": OVERFEAT_PHASES}.get(method_kind(model), DETKIT_PHASES)


def proposal_source(model: nn.Module, num_given: int) -> str:
    """Where the method's regions come from at test time, for the table and the JSON."""
    import inspect

    if "proposals" in inspect.signature(model.forward).parameters:
        return f"given ({num_given}/img)"
    if hasattr(model, "rpn"):
        return "RPN"
    if method_kind(model) == "overfeat":
        return "dense windows"
    return "own"


@torch.no_grad()
def install_random_test_parts(model: nn.Module, *, generator: torch.Generator, std: float = 0.01) -> list[str]:
    """Give an untrained R-CNN/SPPNet the test-time parts its later training stages would fit.

    R-CNN and SPPNet score with linear SVMs (``svm_weight (K, D)``, ``svm_bias (K,)``) and refine
    with class-specific box regressors (``bbox_regressor``: ``weight (K, D_pool, 4)``, ``bias
    (K, 4)``), fitted by ``detkit.engine.stages`` after fine-tuning. A freshly built model has
    zero SVMs and regressors with no examples, and its ``detect`` then skips box regression; so
    that the benchmark times the full test path, parts still at their initial zeros are set to
    ``N(0, std^2)`` values of the right shapes and the regressors are marked as fitted (one
    example per class). Fitted parts are left alone. Returns the names of what was installed.
    """
    installed = []
    if hasattr(model, "svm_weight") and not model.svm_weight.any():
        w = torch.randn(model.svm_weight.shape, generator=generator) * std
        model.svm_weight.copy_(w.to(model.svm_weight))
        installed.append("svm_weight")
    reg = getattr(model, "bbox_regressor", None)
    if reg is not None and int(reg.num_examples.sum()) == 0:
        reg.weight.copy_((torch.randn(reg.weight.shape, generator=generator) * std).to(reg.weight))
        reg.num_examples.fill_(1)
        installed.append("bbox_regressor")
    return installed

