"""The Fast R-CNN predictor: sibling layers on the region head's output (Fast R-CNN §2.1).

* ``cls_score``: ``K + 1`` logits per region for a softmax; **index 0 is background**, object
  class ``k`` (``0..K-1`` in targets and detections) is logit ``k + 1``.
* ``bbox_pred``: class-specific deltas ``(R, 4K)``, laid out ``[class 0: tx ty tw th, class 1: ...]``
  (no regressor for background), normalised with the Fast R-CNN weights (10, 10, 5, 5).

Initialisation as in the paper: zero-mean Gaussians with std 0.01 (scores) and 0.001 (boxes),
biases 0.
"""
from __future__ import annotations

from torch import Tensor, nn


class FastRCNNPredictor(nn.Module):
    """``(R, D, ...)`` region features -> scores ``(R, K+1)`` and deltas ``(R, 4K)``.

    The input is flattened from dimension 1, so a region head may end in fc layers ``(R, D)``
    or in a pooled conv map ``(R, D, 1, 1)`` (ResNet NoC).

    Args:
        in_channels: ``D`` — the backbone's ``head_channels``.
        num_classes: ``K`` object classes (background excluded).
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"FastRCNNPredictor: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)
