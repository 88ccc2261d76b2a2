import pytest
import torch
from torchvision.ops import box_iou

from detkit.ops.box_coder import BoxCoder
from detkit.rcnn.bbox_regression import _ridge, fit_box_regressors

CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))


def _scene(seed=0, per_gt=12, d=16):
    """Proposals jittered around 3 gt boxes (classes 0, 1, 0) and features that encode the R-CNN
    targets linearly: x = t @ A + c. Far-off proposals (IoU <= 0.6) get garbage features."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.tensor([[10.0, 10.0, 60.0, 50.0], [100.0, 40.0, 140.0, 120.0], [30.0, 80.0, 90.0, 110.0]],
                      dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    a = torch.randn(4, d, generator=g, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    props, feats = [], []
    for box in gt:
        t = torch.cat((0.05 * torch.randn(per_gt, 2, generator=g), 0.06 * torch.randn(per_gt, 2, generator=g)), 1)
        p = CODER.decode(-t.double(), box[None].expand(per_gt, 4)).double()  # jitter the box
        props.append(p)
        feats.append(CODER.encode(box[None].expand(per_gt, 4), p).double() @ a + c)
    far = gt[:, None, :] + torch.tensor([25.0, 25.0, 25.0, 25.0], dtype=torch.float64)
    props.append(far.reshape(-1, 4))
    feats.append(50 * torch.randn(len(gt), d, generator=g, dtype=torch.float64))
    return torch.cat(feats), torch.cat(props), gt, labels


def test_recovers_known_shift_and_scale():
    x, p, gt, labels = _scene()
    model = fit_box_regressors(x, p, gt, labels, num_classes=2, lam=1e-6, target_norm=None)
    best_iou, best = box_iou(p, gt).max(1)
    sel = best_iou > 0.6
    assert model.num_examples.tolist() == [int((sel & (labels[best] == k)).sum()) for k in range(2)]
    assert int(sel.sum()) == 36  # the 3 far-off proposals were left out
    refined = model(x[sel], p[sel], labels[best[sel]])
    torch.testing.assert_close(refined, gt[best[sel]].to(refined), atol=1e-3, rtol=0)
    assert (refined - gt[best[sel]]).abs().max() < 0.1 * (p[sel] - gt[best[sel]]).abs().max()
    allk = model(x[sel], p[sel])
    assert allk.shape == (36, 2, 4)
    torch.testing.assert_close(allk[torch.arange(36), labels[best[sel]]], refined)


def test_lambda_shrinks_towards_the_mean_target():
    x, p, gt, labels = _scene(seed=1)
    norms, spread = [], []
    for lam in (1e-3, 1e2, 1e5, 1e12):
        model = fit_box_regressors(x, p, gt, labels, num_classes=2, lam=lam, target_norm=None)
        norms.append(float(model.weight.norm()))
        spread.append(float(model.deltas(x[:36]).std(0).sum()))
    assert norms == sorted(norms, reverse=True) and norms[-1] < 1e-6 * norms[0]
    assert spread == sorted(spread, reverse=True)
    # Infinite penalty: every class predicts its mean training target (the unpenalised intercept).
    best_iou, best = box_iou(p, gt).max(1)
    rows = (best_iou > 0.6) & (labels[best] == 0)
    mean_t = CODER.encode(gt[best[rows]], p[rows]).mean(0)
    torch.testing.assert_close(model.bias[0].double(), mean_t.to(torch.float64), atol=1e-5, rtol=0)


def test_primal_and_dual_forms_are_the_same_ridge():
    g = torch.Generator().manual_seed(2)
    for n, d in ((40, 8), (8, 40)):  # primal branch, then dual branch
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = torch.randn(n, 4, generator=g, dtype=torch.float64)
        w, b = _ridge(x, y, 3.0)
        xc, yc = x - x.mean(0), y - y.mean(0)
        ref = torch.linalg.solve(xc.T @ xc + 3.0 * torch.eye(d, dtype=torch.float64), xc.T @ yc)
        torch.testing.assert_close(w, ref)
        torch.testing.assert_close(b, y.mean(0) - x.mean(0) @ ref)


def test_per_image_lists_and_empty_class():
    x, p, gt, labels = _scene(seed=3)
    one = fit_box_regressors(x, p, gt, labels, num_classes=3, lam=10.0)
    # The same proposals split over two images (each image gets all three gt boxes).
    two = fit_box_regressors(torch.cat((x, x)), torch.cat((p, p)), [gt, gt], [labels, labels],
                             num_classes=3, image_index=torch.arange(2).repeat_interleave(len(p)),
                             lam=20.0)
    torch.testing.assert_close(two.weight, one.weight, atol=1e-4, rtol=1e-4)  # duplicated data, 2x lambda
    assert one.num_examples[2] == 0
    torch.testing.assert_close(one(x, p, torch.full((len(p),), 2)), p.float())  # unchanged
    assert 0 < float(one.feat_scale)
    torch.testing.assert_close(float(one.feat_scale) * x.norm(dim=1).mean(), torch.tensor(20.0, dtype=torch.float64))


def test_bad_input():
    with pytest.raises(ValueError, match="^fit_box_regressors: "):
        fit_box_regressors(torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(1, 4), torch.zeros(1), num_classes=1)
    with pytest.raises(ValueError, match="^fit_box_regressors: "):
        fit_box_regressors(torch.zeros(3, 4), torch.zeros(3, 4), [torch.zeros(1, 4)], [torch.zeros(1)], num_classes=1)
