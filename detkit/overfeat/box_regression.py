"""OverFeat's box regression network (§4.2): a second head on the pooled maps ``P`` that predicts,
at every window, one box **per class** (class-specific, "4 outputs per location" per class).

Architecture as in the paper, scaled by ``channels``: a ``window x window`` convolution over ``P``
(so each output reads exactly the window the classifier reads), then ``1 x 1`` convolutions;
the last has ``4 K`` outputs. Paper: pool5 -> 4096 (5x5) -> 1024 (1x1) -> 4 (x 1000 classes).

**Targets — the R-CNN parameterisation, not OverFeat's raw edges.** OverFeat regresses the four
box edges in pixels relative to the window. Here the window is the reference box of the R-CNN
coding (``t_x, t_y`` = centre offset / window side, ``t_w, t_h`` = log size ratio), normalised with
Fast R-CNN's weights (10, 10, 5, 5) (``detkit.ops.box_coder.BoxCoder``). Reason: the same window
covers 5x different image sizes across the six scales; the relative, log-space coding makes the
targets independent of the scale, which the raw pixel edges are not.

Shape letters: ``N`` images, ``C`` channels of ``P``, ``K`` classes, ``M`` windows per image.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detkit.ops.box_coder import BoxCoder

__all__ = ["BoxRegressionNet", "select_class_deltas", "REG_WEIGHTS"]

REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


class BoxRegressionNet(nn.Module):
    """``(N, C, h, w)`` pooled maps -> ``(N, 4K, h - window + 1, w - window + 1)`` box deltas.

    Args:
        in_channels: ``C`` of the pooled map.
        window: the classifier's window on ``P`` (``FullyConvNet.window``).
        num_classes: ``K``; output channel ``4k + j`` is coordinate ``j`` of class ``k``'s box.
        channels: hidden widths, e.g. ``(4096, 1024)`` as in the paper; the first is the
            ``window x window`` convolution.
        weights: box-coder weights for :attr:`coder` (targets and decoding).
    """

    def __init__(self, *, in_channels: int, window: int, num_classes: int,
                 channels: Sequence[int] = (4096, 1024), weights: Sequence[float] = REG_WEIGHTS) -> None:
        super().__init__()
        if not channels:
            raise ValueError("BoxRegressionNet: channels needs at least one hidden width")
        if num_classes < 1 or window < 1:
            raise ValueError(f"BoxRegressionNet: need num_classes >= 1 and window >= 1, got {num_classes}, {window}")
        layers: list[nn.Module] = []
        cin = int(in_channels)
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, int(c), window if i == 0 else 1), nn.ReLU(inplace=True)]
            cin = int(c)
        self.hidden = nn.Sequential(*layers)
        self.deltas = nn.Conv2d(cin, 4 * num_classes, 1)
        self.num_classes = int(num_classes)
        self.window = int(window)
        self.coder = BoxCoder(weights)
        # Small last layer, as for Fast R-CNN's regressor: early predictions stay near the window.
        nn.init.normal_(self.deltas.weight, std=0.001)
        nn.init.zeros_(self.deltas.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.deltas(self.hidden(pooled))

    def decode(self, deltas: Tensor, windows: Tensor) -> Tensor:
        """``(N, M, 4K)`` deltas and ``(N, M, 4)`` windows -> ``(N, M, K, 4)`` class-specific boxes."""
        n, m, _ = deltas.shape
        return self.coder.decode(deltas.reshape(n, m, self.num_classes, 4), windows[:, :, None, :])

    def encode(self, boxes: Tensor, windows: Tensor) -> Tensor:
        """Regression targets of ``(..., 4)`` ground-truth boxes against ``(..., 4)`` windows."""
        return self.coder.encode(boxes, windows)


def select_class_deltas(deltas: Tensor, labels: Tensor) -> Tensor:
    """Pick each row's class: ``(R, 4K)`` deltas, ``(R,)`` labels in ``0..K-1`` -> ``(R, 4)``."""
    k = deltas.shape[-1] // 4
    idx = labels.clamp(0, k - 1)[:, None, None].expand(-1, 1, 4)
    return deltas.reshape(-1, k, 4).gather(1, idx).squeeze(1)
