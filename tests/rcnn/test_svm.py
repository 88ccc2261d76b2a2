import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from detkit.rcnn.svm import HINGE_CONTINUATION, feature_scale, train_class_svms, train_svm


def _separable(seed=0, n=60, d=10):
    g = torch.Generator().manual_seed(seed)
    normal = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(4 * n, d, generator=g, dtype=torch.float64)
    side = x @ normal / normal.norm()
    x = x[side.abs() > 0.3][:n]  # a margin of 0.3 around the hyperplane through 0.5 * normal
    x = x + 0.5 * normal / normal.norm()
    y = (x @ normal / normal.norm() - 0.5) > 0
    return x[y], x[~y]


def _objective(w, b, pos, neg, *, C, pos_weight, bias_mult, loss):
    z_pos, z_neg = pos @ w + b, neg @ w + b
    r = np.concatenate([np.maximum(0, 1 - z_pos), np.maximum(0, 1 + z_neg)])
    c = np.concatenate([np.full(len(pos), pos_weight), np.ones(len(neg))])
    lossv = r if loss == "hinge" else r * r
    return 0.5 * w @ w + 0.5 * (b / bias_mult) ** 2 + C * (c * lossv).sum()


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_separates_a_separable_set(loss):
    pos, neg = _separable()
    svm = train_svm(pos, neg, C=10.0, pos_weight=1.0, loss=loss, chunk_size=len(neg))
    assert (svm.scores(pos) > 0).all() and (svm.scores(neg) < 0).all()
    assert svm.weight.shape == (pos.shape[1],) and svm.bias.shape == ()


def _overlapping(seed=1, n=40, d=3):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.7
    neg = torch.randn(n + 10, d, generator=g, dtype=torch.float64) - 0.7
    return pos, neg


def _augmented(pos, neg, *, bias_mult, pos_weight, **_):
    """The primal as plain arrays for an independent solver: rows with the bias feature
    ``bias_mult`` appended, labels +-1, per-row loss weights."""
    x = torch.cat((pos, neg)).numpy()
    x = np.hstack([x, np.full((len(x), 1), bias_mult)])
    y = np.r_[np.ones(len(pos)), -np.ones(len(neg))]
    c = np.r_[np.full(len(pos), pos_weight), np.ones(len(neg))]
    return x, y, c


def test_squared_hinge_is_the_optimum():
    # Independent solver: scipy's L-BFGS on the same primal (bias as a feature of value bias_mult).
    pos, neg = _overlapping()
    kw = dict(C=0.5, pos_weight=2.0, bias_mult=10.0)
    svm = train_svm(pos, neg, loss="squared_hinge", chunk_size=len(neg), **kw)
    x, y, c = _augmented(pos, neg, **kw)

    def f(t):
        r = np.maximum(0, 1 - y * (x @ t))
        return 0.5 * t @ t + kw["C"] * (c * r * r).sum(), t - 2 * kw["C"] * x.T @ (c * y * r)

    ref = minimize(f, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(svm.weight.numpy(), ref[:-1], atol=1e-5)
    assert float(svm.bias) == pytest.approx(ref[-1] * kw["bias_mult"], abs=1e-4)


def test_hinge_within_smoothing_bound_of_the_dual_optimum():
    # Hinge dual (liblinear -s 3): max sum(a) - |sum a_i y_i x_i|^2 / 2, 0 <= a_i <= C c_i.
    pos, neg = _overlapping(seed=2)
    kw = dict(C=0.5, pos_weight=2.0, bias_mult=10.0)
    svm = train_svm(pos, neg, loss="hinge", chunk_size=len(neg), **kw)
    x, y, c = _augmented(pos, neg, **kw)
    q = (x * y[:, None])

    def neg_dual(a):
        v = q.T @ a
        return 0.5 * v @ v - a.sum(), q @ v - 1

    res = minimize(neg_dual, np.zeros(len(x)), jac=True, method="L-BFGS-B",
                   bounds=[(0, kw["C"] * ci) for ci in c], options={"gtol": 1e-12, "ftol": 1e-15})
    dual = -res.fun
    ours = _objective(svm.weight.numpy(), float(svm.bias), pos.numpy(), neg.numpy(), loss="hinge", **kw)
    slack = kw["C"] * c.sum() * HINGE_CONTINUATION[-1] / 2  # smoothed vs exact hinge
    assert dual - 1e-6 <= ours <= dual + slack + 1e-6


def test_pos_weight_moves_the_boundary_towards_the_negatives():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(200, 1, generator=g, dtype=torch.float64) + 1
    neg = torch.randn(200, 1, generator=g, dtype=torch.float64) - 1
    cut = {}
    for w1 in (1.0, 4.0):
        svm = train_svm(pos, neg, C=0.1, pos_weight=w1, chunk_size=len(neg))
        assert float(svm.weight) > 0
        cut[w1] = -float(svm.bias) / float(svm.weight)
    assert abs(cut[1.0]) < 0.25  # symmetric classes, equal weights: boundary near 0
    assert cut[4.0] < cut[1.0] - 0.2


def _mining_set():
    pos = torch.tensor([[2.0, -1.0], [2.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    x1 = [-2.0, -2.0, -8.0, -8.0,            # chunk 0: ids 0-3
          -1.0, 0.0, -1.8, -2.2, -6.0, -10.0]  # chunk 1: ids 4-9
    x2 = [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    return pos, torch.tensor([x1, x2], dtype=torch.float64).T


def _ids(t):
    return sorted(t.tolist())


def test_hard_negative_mining_adds_hardest_and_evicts_easy():
    # Round 1 (chunk 0 whole): hard margin between x1 = 2 and -2 -> score 0.5 * x1; the x1 = -8
    # negatives score -4 < -1.2 and are evicted. Chunk 1 scores -0.5, 0, -0.9 (hard: > -1),
    # -1.1, -3, -5 (not hard). Retrained with x1 = 0 as negative -> score x1 - 1: evicts all but id 5.
    pos, pool = _mining_set()
    svm = train_svm(pos, pool, C=100.0, pos_weight=1.0, chunk_size=4, loss="hinge")
    first, second = svm.log
    assert _ids(first["added"]) == [0, 1, 2, 3] and _ids(first["evicted"]) == [2, 3]
    assert _ids(second["added"]) == [4, 5, 6] and second["num_neg"] == 5
    assert _ids(second["evicted"]) == [0, 1, 4, 6]
    np.testing.assert_allclose(svm.weight.numpy(), [1.0, 0.0], atol=1e-2)
    assert float(svm.bias) == pytest.approx(-1.0, abs=1e-2)


def test_mining_with_a_callable_pool_and_a_cache_limit():
    pos, pool = _mining_set()
    a = train_svm(pos, pool, C=100.0, pos_weight=1.0, chunk_size=4, loss="squared_hinge")
    b = train_svm(pos, lambda: iter(torch.split(pool, 4)), C=100.0, pos_weight=1.0,
                  loss="squared_hinge")
    torch.testing.assert_close(a.weight, b.weight)
    assert [_ids(e["added"]) for e in a.log] == [_ids(e["added"]) for e in b.log]
    # Cache limit 2: of the 5 cached after chunk 1, the two highest-scoring (ids 5, 4) are kept.
    c = train_svm(pos, pool, C=100.0, pos_weight=1.0, chunk_size=4, cache_limit=2)
    assert c.log[-1]["num_neg"] == 2
    assert _ids(c.log[-1]["evicted"]) == [4]  # after retraining on {4, 5}: x1 = -1 scores -2


def test_train_class_svms_three_classes():
    g = torch.Generator().manual_seed(4)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    gt = torch.cat([c + 0.3 * torch.randn(8, 2, generator=g) for c in centres])
    gt_labels = torch.arange(3).repeat_interleave(8)
    props = 0.5 * torch.randn(30, 2, generator=g) + torch.tensor([0.0, -2.0])
    features = torch.cat((gt, props))
    labels = torch.cat((gt_labels, torch.full((30,), -1)))
    gt_mask = torch.cat((torch.ones(24, dtype=torch.bool), torch.zeros(30, dtype=torch.bool)))
    overlaps = torch.zeros(54, 3)
    overlaps[torch.arange(24), gt_labels] = 1.0
    image_ids = torch.arange(54) % 5
    w, b = train_class_svms(features, labels, gt_mask, overlaps, C=1.0, pos_weight=1.0,
                            image_ids=image_ids)
    assert w.shape == (3, 2) and b.shape == (3,)
    scores = features @ w.T + b
    assert (scores[:24].argmax(1) == gt_labels).all()  # other classes' gt were negatives
    assert (scores[24:] < 0).all()
    w2, _ = train_class_svms(features, labels, gt_mask, C=1.0, pos_weight=1.0, image_ids=image_ids)
    torch.testing.assert_close(w2, w)  # labels-only negatives are the same here


def test_feature_scale_and_bad_input():
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0]])  # norms 5 and 10
    assert feature_scale(x) == pytest.approx(20 / 7.5)
    with pytest.raises(ValueError, match="^train_svm: "):
        train_svm(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="^train_svm: "):
        train_svm(torch.ones(2, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="^train_svm: "):
        train_svm(torch.ones(2, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="^train_svm: "):
        train_svm(torch.ones(2, 2), torch.zeros(3, 2), loss="log")


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_liblinear_solver_reaches_the_torch_optimum(loss):
    """The optional liblinear backend solves the same primal: its exact objective matches the
    Newton solver's within the hinge smoothing bound (and 1e-4 relative for the squared hinge)."""
    pytest.importorskip("sklearn", reason="scikit-learn (detkit[liblinear]) is not installed")
    pos, neg = _overlapping(seed=3, n=60)
    kw = dict(C=0.05, pos_weight=2.0, bias_mult=10.0, loss=loss)
    ours = train_svm(pos, neg, chunk_size=len(neg), solver="torch", **kw)
    lib = train_svm(pos, neg, chunk_size=len(neg), solver="liblinear", **kw)
    assert lib.log[-1]["solver"] == "liblinear" and ours.log[-1]["solver"] == "torch"
    obj = {name: _objective(m.weight.numpy(), float(m.bias), pos.numpy(), neg.numpy(), **kw)
           for name, m in (("torch", ours), ("liblinear", lib))}
    c_sum = kw["C"] * (kw["pos_weight"] * len(pos) + len(neg))
    slack = c_sum * HINGE_CONTINUATION[-1] / 2 if loss == "hinge" else 1e-4 * obj["torch"]
    assert abs(obj["liblinear"] - obj["torch"]) <= slack + 1e-4 * obj["torch"]
    agree = (torch.sign(lib.scores(torch.cat((pos, neg)))) == torch.sign(ours.scores(torch.cat((pos, neg)))))
    assert agree.float().mean() >= 0.95


def test_liblinear_with_hard_negative_mining():
    pytest.importorskip("sklearn", reason="scikit-learn (detkit[liblinear]) is not installed")
    pos, neg = _separable(seed=4)
    svm = train_svm(pos, neg, C=10.0, pos_weight=1.0, chunk_size=8, retrain_limit=4, solver="liblinear")
    assert len(svm.log) > 1 and all(e["solver"] == "liblinear" for e in svm.log)
    assert (svm.scores(pos) > 0).all() and (svm.scores(neg) < 0).all()


def test_solver_choice(monkeypatch):
    import detkit.rcnn.svm as svm_module

    monkeypatch.setattr(svm_module, "liblinear_available", lambda: True)
    assert svm_module.resolve_solver("auto", torch.device("cpu")) == "liblinear"
    assert svm_module.resolve_solver("auto", torch.device("cuda")) == "torch"  # features stay on the GPU
    assert svm_module.resolve_solver("torch", torch.device("cpu")) == "torch"
    monkeypatch.setattr(svm_module, "liblinear_available", lambda: False)
    assert svm_module.resolve_solver("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ImportError, match="scikit-learn"):
        svm_module.resolve_solver("liblinear", torch.device("cpu"))
    with pytest.raises(ValueError, match="solver must be one of"):
        svm_module.resolve_solver("sgd", torch.device("cpu"))
