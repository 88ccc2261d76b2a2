"""The five steps of the lineage, in order, and the training overrides each gets in a lineage run.

Each step keeps its predecessor's parts but one (the paper's one idea, :attr:`Step.idea`). A lineage
run trains every step with the same data, backbone and evaluator under one training budget each:

* with ``preset=cpu`` (the default; configs/preset/cpu.yaml: AlexNet-BN at half width, 480 px,
  bf16 where it is faster) the steps also get the small-CPU settings of
  configs/experiments/cpu.yaml — R-CNN's and SPPNet's fine-tuning as a from-scratch SGD stage,
  SPPNet at one scale, OverFeat's three coarsest window scales — and R-CNN, SPPNet and Fast R-CNN
  take the same first ``proposals`` selective search boxes of each image (OpenCV's default search
  density), so their times compare like with like;
* with ``preset=paper`` only the budget is added: the papers' settings as configured.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    """One method of the lineage: its config name, the paper, and what it changed."""

    method: str        # configs/method/<method>.yaml
    title: str         # as the paper names it
    paper: str         # authors, venue, year
    idea: str          # what changed from the previous step, in a sentence
    recipe: str        # joint | stages (how the budget is applied)
    search: bool       # trains and tests on selective search boxes


STEPS: tuple[Step, ...] = (
    Step("rcnn", "R-CNN", "Girshick et al., CVPR 2014",
         "A CNN replaces hand-made features: each selective search box is warped to 227 x 227 and "
         "run through the whole network; linear SVMs score its fc7 features, a ridge regressor refines the box.",
         "stages", True),
    Step("sppnet", "SPPNet", "He et al., ECCV 2014",
         "The convolutions run once per image, not once per box: spatial pyramid pooling turns any "
         "box of the conv5 map into a fixed-length vector for the fc layers.", "stages", True),
    Step("overfeat", "OverFeat", "Sermanet et al., ICLR 2014",
         "No proposals at all: the classifier, made fully convolutional, slides densely over several "
         "scales and a regression network predicts a box at every window; boxes are merged greedily.",
         "joint", False),
    Step("fast_rcnn", "Fast R-CNN", "Girshick, ICCV 2015",
         "One network trained end to end: RoI pooling on the shared conv map, a softmax instead of SVMs "
         "and box regression learnt jointly with a multi-task loss.", "joint", True),
    Step("faster_rcnn", "Faster R-CNN", "Ren et al., NeurIPS 2015",
         "The proposals come from the network too: a region proposal network shares the conv map and "
         "predicts objectness and boxes at anchors, replacing selective search.", "joint", False),
)
METHODS: tuple[str, ...] = tuple(s.method for s in STEPS)


def step(method: str) -> Step:
    """The :class:`Step` of ``method`` (a configs/method name)."""
    for s in STEPS:
        if s.method == method:
            return s
    raise ValueError(f"lineage: unknown method {method!r} (one of {', '.join(METHODS)})")


# Small-CPU settings (configs/experiments/cpu.yaml) beyond preset=cpu, per recipe. R-CNN and
# SPPNet fine-tune from scratch, so stage 1 gets a from-scratch learning rate and a cosine that ends
# with the budget; the papers' 1e-3 / 1e-4 are fine-tuning rates for ImageNet weights.
_CPU_STAGE1 = ["method.stages.finetune.lr=0.01", "method.stages.finetune.schedule=cosine",
               "method.stages.finetune.schedule_clock=time", "method.stages.finetune.warmup_iters=50",
               "method.stages.finetune.batch_size=2", "method.stages.finetune.max_iters=100000"]
_CPU_EXTRA: dict[str, list[str]] = {
    "rcnn": _CPU_STAGE1,
    "sppnet": [*_CPU_STAGE1, "method.model.train_trunk=true", "method.model.scales=null"],
    # the six scales down to 0.18 of the shorter side resize images to 2000 px: a few steps per minute
    "overfeat": ["method.model.scales=[1.0,0.7,0.5]", "method.model.max_size=800"],
    "fast_rcnn": [],
    "faster_rcnn": [],
}


# With a few hundred boxes per image, OpenCV's default search density (k = 150, 300, 450) ranks
# objects earlier than R-CNN's finer k = 35 (which makes ~2000 boxes): recall@0.5 of the first 300
# on raccoon's test split 1.0 against 0.63 (docs/lineage.md).
_CPU_SEARCH = ["data.proposals.base_k=150", "data.proposals.inc_k=150"]


def preset_of(overrides: Sequence[str]) -> str:
    """The ``preset=`` among ``overrides`` (the lineage's default: ``cpu``)."""
    found = [o.split("=", 1)[1] for o in overrides if o.startswith("preset=")]
    return found[-1] if found else "cpu"


def train_overrides(method: str, overrides: Sequence[str], *, budget_s: float, proposals: int | None) -> list[str]:
    """The ``detkit train`` overrides of one lineage step (module docstring).

    Args:
        method: a name of :data:`METHODS`.
        overrides: the user's overrides, shared by every step (data, backbone, ...), and
            ``METHOD:KEY=VALUE`` ones for one step only (``rcnn:method.model.context=0``); they come
            last but for the budget, so a user's setting wins over the lineage's small-CPU ones.
        budget_s: training seconds (``solver.max_time_s``; R-CNN and SPPNet: their fine-tuning
            stage's, the SVMs and box regression come after it).
        proposals: selective search boxes per image for R-CNN, SPPNet and Fast R-CNN (``None``: the
            data config's or preset's).
    """
    s = step(method)
    if budget_s <= 0:
        raise ValueError(f"lineage: the budget of {method} must be positive, got {budget_s}")
    preset = preset_of(overrides)
    out = [f"method={method}", f"preset={preset}"]
    if preset == "cpu":
        out += _CPU_EXTRA[method] + (_CPU_SEARCH if s.search else [])
    if s.search and proposals is not None:
        out.append(f"data.proposals.max_proposals={int(proposals)}")
    for o in overrides:
        scope, sep, rest = o.partition(":")
        if sep and "=" not in scope:  # METHOD:KEY=VALUE
            if scope not in METHODS:
                raise ValueError(f"lineage: {o!r} is scoped to {scope!r}, not a method of the lineage "
                                 f"({', '.join(METHODS)})")
            if scope == method and not rest.startswith(("method=", "preset=")):
                out.append(rest)
        elif not o.startswith(("method=", "preset=")):
            out.append(o)
    budget_key = "method.stages.finetune.max_time_s" if s.recipe == "stages" else "solver.max_time_s"
    return [*out, f"{budget_key}={float(budget_s):g}"]
