"""R-CNN's class-specific bounding-box regression (R-CNN appendix C, ``rcnn_train_bbox_regressor.m``).

For each class ``k`` a linear map from a proposal's features (pool5 in R-CNN) to the four R-CNN
targets ``t = (t_x, t_y, t_w, t_h)`` of its best-overlapping ground truth (``detkit.ops.box_coder``,
weights 1) is fitted by ridge regression::

    W_k = argmin_W  |X W + 1 b - T|^2 + lambda |W|^2        (lambda = 1000)

on the proposals whose IoU with a ground truth of class ``k`` is > 0.6 (that ground truth, the
best-overlapping one, is the target). Closed form, in torch on the features' device: the intercept
is left unpenalised by centring ``X`` and ``T``; then ``W = (X^T X + lambda I)^{-1} X^T T`` when
there are more examples than feature dimensions, else the identical dual form
``W = X^T (X X^T + lambda I)^{-1} T`` (a per-class ``n x n`` system instead of ``D x D``: pool5 is
9216-D, a class has a few thousand examples).

Target normalisation: R-CNN centres and whitens the targets (``T <- (T - mu) S^{-1/2}``) and maps
predictions back. With one ridge penalty shared by all four outputs the prediction
``H (T - mu) S^{-1/2} S^{1/2} + mu = H (T - mu) + mu`` (``H`` the ridge hat matrix) does not depend
on the whitening, so only the centring (our unpenalised intercept) is kept. Features are scaled to
mean norm ``target_norm`` (R-CNN: 20, ``rcnn_scale_features``) so ``lambda = 1000`` means what it
meant in R-CNN; the scale is stored and reapplied at test time.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detkit.ops.box_coder import BoxCoder


class BoxRegressors(nn.Module):
    """Fitted per-class box regressors; ``forward`` applies them ("refined boxes").

    Buffers: ``weight (K, D, 4)``, ``bias (K, 4)``, ``feat_scale ()``, ``num_examples (K,)``.
    A class without training examples has zero weight and bias: its boxes are left unchanged.
    """

    def __init__(self, *, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_classes, feature_dim, 4))
        self.register_buffer("bias", torch.zeros(num_classes, 4))
        self.register_buffer("feat_scale", torch.tensor(1.0))
        self.register_buffer("num_examples", torch.zeros(num_classes, dtype=torch.long))
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def deltas(self, features: Tensor) -> Tensor:
        """``(M, D)`` features -> ``(M, K, 4)`` predicted ``(t_x, t_y, t_w, t_h)`` per class."""
        x = features.to(self.weight) * self.feat_scale
        return torch.einsum("md,kdf->mkf", x, self.weight) + self.bias

    def forward(self, features: Tensor, proposals: Tensor, labels: Tensor | None = None) -> Tensor:
        """Refine proposals.

        Args:
            features: ``(M, D)`` features of the proposals (the ones the regressors were fit on).
            proposals: ``(M, 4)`` xyxy boxes.
            labels: optional ``(M,)`` int64 class per proposal.

        Returns:
            ``(M, K, 4)`` boxes refined for every class, or ``(M, 4)`` for the given labels.
        """
        if features.shape[0] != proposals.shape[0]:
            raise ValueError(f"BoxRegressors: {features.shape[0]} feature rows for "
                             f"{proposals.shape[0]} proposals")
        t = self.deltas(features)
        if labels is not None:
            t = t[torch.arange(len(t), device=t.device), labels.to(t.device)]
            return self.coder.decode(t, proposals.to(t))
        return self.coder.decode(t, proposals.to(t)[:, None, :])


def _ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Ridge regression with an unpenalised intercept: ``(n, D), (n, 4) -> W (D, 4), b (4,)``."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    n, d = xc.shape
    if n >= d:  # primal: D x D normal equations
        w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(d, dtype=x.dtype, device=x.device), xc.T @ yc)
    else:  # dual: the same solution through an n x n system
        w = xc.T @ torch.linalg.solve(xc @ xc.T + lam * torch.eye(n, dtype=x.dtype, device=x.device), yc)
    return w, ym - xm @ w


def fit_box_regressors(features: Tensor, proposals: Tensor, gt_boxes: Tensor | Sequence[Tensor],
                       gt_labels: Tensor | Sequence[Tensor], *, num_classes: int,
                       image_index: Tensor | None = None, lam: float = 1000.0,
                       min_iou: float = 0.6, target_norm: float | None = 20.0) -> BoxRegressors:
    """Fit R-CNN's class-specific box regressors.

    Args:
        features: ``(M, D)`` proposal features (pool5 in R-CNN).
        proposals: ``(M, 4)`` xyxy proposal boxes (include the ground-truth boxes among them if
            they should count, as R-CNN's feature cache did).
        gt_boxes: ``(G, 4)`` ground truth of a single image, or a list of ``(G_i, 4)`` per image.
        gt_labels: ``(G,)`` int64 classes, or a list of ``(G_i,)``.
        num_classes: ``K``.
        image_index: ``(M,)`` image of each proposal, required with per-image lists.
        lam: ridge penalty ``lambda`` (R-CNN: 1000).
        min_iou: train on proposals with IoU > ``min_iou`` with their best ground truth (R-CNN: 0.6).
        target_norm: scale features to this mean L2 norm first (R-CNN: 20); ``None``: no scaling.

    Returns:
        ``BoxRegressors`` on the features' device.
    """
    if features.dim() != 2 or proposals.shape != (features.shape[0], 4):
        raise ValueError(f"fit_box_regressors: features must be (M, D) and proposals (M, 4), got "
                         f"{tuple(features.shape)} and {tuple(proposals.shape)}")
    dev = features.device
    dtype = features.dtype if features.dtype == torch.float64 else torch.float32
    if isinstance(gt_boxes, Tensor):
        gt_boxes, gt_labels = [gt_boxes], [gt_labels]
        image_index = torch.zeros(len(proposals), dtype=torch.long, device=dev)
    if image_index is None or len(gt_boxes) != len(gt_labels):
        raise ValueError("fit_box_regressors: per-image gt lists need image_index (M,) and as many "
                         "label tensors as box tensors")
    proposals, image_index = proposals.to(dev, dtype), image_index.to(dev)
    best_gt = torch.zeros(len(proposals), 4, dtype=dtype, device=dev)
    cls = torch.full((len(proposals),), -1, dtype=torch.long, device=dev)
    for i, (g, lab) in enumerate(zip(gt_boxes, gt_labels)):
        rows = (image_index == i).nonzero()[:, 0]
        if len(rows) == 0 or len(g) == 0:
            continue
        iou = box_iou(proposals[rows], g.to(dev, dtype))
        best, arg = iou.max(dim=1)
        sel = best > min_iou
        best_gt[rows[sel]] = g.to(dev, dtype)[arg[sel]]
        cls[rows[sel]] = lab.to(dev)[arg[sel]]

    model = BoxRegressors(num_classes=num_classes, feature_dim=features.shape[1]).to(dev)
    x = features.to(dtype)
    if target_norm is not None:
        norms = x.norm(dim=1)
        if float(norms.mean()) > 0:
            model.feat_scale.fill_(target_norm / float(norms.mean()))
    x = x * model.feat_scale.to(dtype)
    targets = model.coder.encode(best_gt, proposals).to(dtype)  # the coder works in float32
    for k in range(num_classes):
        sel = cls == k
        model.num_examples[k] = int(sel.sum())
        if sel.any():
            w, b = _ridge(x[sel], targets[sel], lam)
            model.weight[k], model.bias[k] = w.to(model.weight), b.to(model.bias)
    return model
