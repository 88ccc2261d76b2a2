"""A small Faster R-CNN checkpoint with a non-trivial classifier, and the check that a compressed
predictor still finds its best detection (shared by the SVD and int8 tests)."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.ops import box_iou

from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state
from detkit.engine.config import compose_run_config


def small_checkpoint(folder: Path) -> tuple[Path, torch.nn.Module]:
    """``folder/last.pt`` of a quarter-width AlexNet-BN Faster R-CNN (3 classes) and the model."""
    conf = compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.25", "backbone.norm=bn",
                               "data.transforms.min_size=160", "data.transforms.max_size=256",
                               "method.model.anchor_sizes=[32,64,128]", "method.model.box_score_thresh=0.0"])
    torch.manual_seed(0)
    model = build_model(conf, 3).eval()
    with torch.no_grad():
        model.roi_head.predictor.cls_score.weight.normal_(0, 0.05)
    path = folder / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=["a", "b", "c"]), path)
    return path, model


def keeps_best_detection(full, small) -> bool:
    """The best detection of ``full`` is still in ``small``: same label, box IoU > 0.9."""
    best = int(full.scores.argmax())
    overlap = box_iou(torch.as_tensor(full.boxes[best:best + 1]), torch.as_tensor(small.boxes))[0]
    same = torch.as_tensor(small.labels) == int(full.labels[best])
    return bool(((overlap > 0.9) & same).any())
