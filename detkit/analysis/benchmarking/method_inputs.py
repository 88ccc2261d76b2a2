"""What the benchmark reads from each detection method — the phases and proposal source it declares
(``detkit.methods.base.Detector``) — and the test-time parts a random-weight model lacks.

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

from detkit.methods.base import ROI_HEAD_PHASES

# Fast and Faster R-CNN's phase map (each method declares its own: ``Detector.phases``).
DETKIT_PHASES: dict[str, list[str]] = ROI_HEAD_PHASES


def phase_map(model: nn.Module) -> dict[str, list[str]]:
    """The phases ``model``'s method declares (``detkit.methods.base.Detector.phases``); Fast/Faster
    R-CNN's for a model that declares none."""
    return getattr(type(model), "phases", DETKIT_PHASES)


def proposal_source(model: nn.Module, num_given: int) -> str:
    """Where the method's regions come from at test time (its ``proposals`` declaration), for the
    table and the JSON."""
    source = getattr(type(model), "proposals", "own")
    return f"given ({num_given}/img)" if source == "given" else {"rpn": "RPN"}.get(source, source)


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

