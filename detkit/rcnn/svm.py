"""R-CNN's object-category classifiers: one linear SVM per class with hard-negative mining
(R-CNN §2.3 "Object category classifiers", ``rcnn_train.m``).

Problem solved per class (liblinear's primal with ``-w1 pos_weight -c C -B bias_mult``)::

    min_{w, w_b}  1/2 |w|^2 + 1/2 w_b^2 + C * sum_i c_i * loss(y_i * (x_i . w + bias_mult * w_b))

with ``y_i = +1`` for positives (weight ``c_i = pos_weight``, R-CNN: 2) and ``-1`` for negatives
(``c_i = 1``); the bias is ``b = bias_mult * w_b`` (R-CNN: ``bias_mult = 10``), so its penalty
``1/2 (b / 10)^2`` is 100x weaker than a weight's — a nearly free bias, as in R-CNN. ``loss`` is the
hinge ``max(0, 1 - m)`` (R-CNN, liblinear ``-s 3``) or the squared hinge ``max(0, 1 - m)^2``.
R-CNN's ``C = 0.001`` assumes features scaled to mean norm 20 (``rcnn_scale_features``): multiply
features by ``feature_scale(features)`` first.

Solver: Newton's method in torch, on the features' own device (the GPU where they are cached, the
CPU in tests). The squared hinge is piecewise quadratic, so Newton with the generalised Hessian
``I + 2C X_A^T diag(c) X_A`` (``A``: margin violators) and a backtracking line search converges in
a handful of steps (liblinear ``-s 2`` solves the same problem with TRON). The hinge is not
differentiable at ``m = 1``; we solve its Huber smoothing (quadratic on ``(1 - delta, 1)``) by
continuation ``delta = 1, 0.1, 0.01, 0.001``, warm-starting each; the objective then differs from
the exact hinge optimum by at most ``C * sum c_i * delta / 2``. The Hessian is ``(D+1)^2``
(fc7: 4097^2 = 67 MB), one Cholesky per step: on the GPU, where the features are cached, a
retrain is a few dense GEMMs and factorisations on the device.

``solver="liblinear"`` solves the same problem with scikit-learn's ``LinearSVC`` (liblinear, R-CNN's
own solver: ``-s 3`` dual coordinate descent for the hinge, ``-s 2`` for the squared hinge), on the
CPU, without warm starts. On the CPU it is 25-270x faster than the Newton solver at fc7 size
(docs/rcnn_sppnet.md, ``tools/svm_solvers.py``), so ``solver="auto"`` (the stage-2 default) takes
it for features on the CPU when scikit-learn is installed (``pip install detkit[liblinear]``) and
the torch solver otherwise. scikit-learn is an optional dependency.

Hard-negative mining (``rcnn_train.m``): positives are the ground-truth boxes of the class; the
negative pool (regions with IoU < 0.3 with every ground truth of the class) is visited chunk by
chunk (R-CNN: image by image). The first chunk is taken whole and the SVM is trained; afterwards a
chunk only contributes its *hard* negatives — score ``> hard_thresh = -1.0001`` (inside the margin
or misclassified) and not cached already. The SVM is retrained whenever more than
``retrain_limit = 2000`` negatives were added since the last training, and after the last chunk;
after each training, *easy* cached negatives (score ``< evict_thresh = -1.2``) are evicted.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

LOSSES = ("hinge", "squared_hinge")
SOLVERS = ("auto", "torch", "liblinear")
# liblinear's stopping tolerance: scikit-learn's default. R-CNN ran liblinear's -s 3 default (0.1),
# which stops ~0.4 % above the optimum on fc7-sized problems (docs/rcnn_sppnet.md); 1e-4 reaches it
# (within 0.001 %) at a few seconds per retrain.
LIBLINEAR_TOL, LIBLINEAR_MAX_ITER = 1e-4, 10000
# Huber-smoothing widths for the hinge, coarse to fine (see the module docstring).
HINGE_CONTINUATION = (1.0, 0.1, 0.01, 0.001)


@dataclass
class LinearSVM:
    """A trained linear SVM: ``score(x) = x . weight + bias``.

    Attributes:
        weight: ``(D,)``.
        bias: ``()`` tensor.
        log: one dict per (re)training during mining: ``round``, ``chunk``, ``num_pos``,
            ``num_neg``, ``added`` and ``evicted`` (LongTensors of negative-pool row ids: the
            running row number over the pool's chunks), ``objective``.
    """

    weight: Tensor
    bias: Tensor
    log: list[dict] = field(default_factory=list)

    def scores(self, features: Tensor) -> Tensor:
        """``(M, D)`` features -> ``(M,)`` SVM scores."""
        return features.to(self.weight) @ self.weight + self.bias


def feature_scale(features: Tensor, target_norm: float = 20.0) -> float:
    """R-CNN's feature scaling factor: ``target_norm / mean |x|`` over ``(M, D)`` features, so
    that scaled features have mean L2 norm ``target_norm`` (20 in ``rcnn_scale_features``)."""
    norms = features.float().norm(dim=1)
    if norms.numel() == 0 or float(norms.mean()) == 0:
        raise ValueError("feature_scale needs non-empty, non-zero features")
    return target_norm / float(norms.mean())


def _loss_terms(m: Tensor, loss: str, delta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, first and second derivative at margins ``m = y * score``."""
    r = (1 - m).clamp(min=0)
    if loss == "squared_hinge":
        return r * r, -2 * r, 2 * (r > 0).to(m)
    quad = r < delta  # the smoothed hinge's quadratic piece (1 - delta, 1)
    value = torch.where(quad, r * r / (2 * delta), r - delta / 2)
    grad = torch.where(quad, -r / delta, -torch.ones_like(r))
    hess = (quad & (r > 0)).to(m) / delta
    return value, grad, hess


def _newton(x: Tensor, y: Tensor, c: Tensor, theta: Tensor, *, C: float, bias_mult: float,
            loss: str, delta: float, tol: float, max_iter: int) -> Tensor:
    """Minimise the SVM objective over ``theta = (w, w_b)`` (``(D+1,)``) by damped Newton."""
    d = x.shape[1]

    def scores(t: Tensor) -> Tensor:
        return x @ t[:d] + bias_mult * t[d]

    def objective(z: Tensor, t: Tensor) -> Tensor:
        return 0.5 * t.dot(t) + C * (c * _loss_terms(y * z, loss, delta)[0]).sum()

    z = scores(theta)
    g0 = None
    ftol = 100 * torch.finfo(x.dtype).eps
    for _ in range(max_iter):
        _, lp, lpp = _loss_terms(y * z, loss, delta)
        r = C * c * y * lp
        grad = theta.clone()
        grad[:d] += x.T @ r
        grad[d] += bias_mult * r.sum()
        gnorm = float(grad.norm())
        g0 = gnorm if g0 is None else g0
        if gnorm <= tol * max(g0, 1.0):
            break
        s = C * c * lpp
        act = s > 0
        xa, sa = x[act], s[act]
        hess = torch.eye(d + 1, dtype=x.dtype, device=x.device)
        hess[:d, :d] += xa.T @ (xa * sa[:, None])
        cross = bias_mult * (xa.T @ sa)
        hess[:d, d] += cross
        hess[d, :d] += cross
        hess[d, d] += bias_mult ** 2 * sa.sum()
        step = -torch.cholesky_solve(grad[:, None], torch.linalg.cholesky(hess))[:, 0]
        dz = scores(step)
        f0, slope, t = objective(z, theta), float(grad.dot(step)), 1.0
        if -slope <= ftol * max(1.0, abs(float(f0))):
            break  # Newton decrement at rounding level: nothing left to gain in this dtype
        while t > 1e-6 and float(objective(z + t * dz, theta + t * step)) > float(f0) + 1e-4 * t * slope:
            t *= 0.5  # Armijo backtracking: the generalised Hessian can overshoot across a kink
        if t <= 1e-6:  # no descent along the Newton direction: converged to rounding
            break
        theta, z = theta + t * step, z + t * dz
    return theta


def _problem(pos: Tensor, neg: Tensor, pos_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``x (P+Q, D)``, labels ``y`` (+1 / -1) and loss weights ``c`` (``pos_weight`` / 1)."""
    x = torch.cat((pos, neg))
    y = torch.cat((torch.ones(len(pos)), -torch.ones(len(neg)))).to(x)
    c = torch.cat((torch.full((len(pos),), float(pos_weight)), torch.ones(len(neg)))).to(x)
    return x, y, c


def _objective(x: Tensor, y: Tensor, c: Tensor, theta: Tensor, *, C: float, bias_mult: float,
               loss: str) -> float:
    """The exact primal objective of the module docstring at ``theta = (w, w_b)``."""
    r = (1 - y * (x @ theta[:-1] + bias_mult * theta[-1])).clamp(min=0)
    return float(0.5 * theta.dot(theta) + C * (c * (r if loss == "hinge" else r * r)).sum())


def _fit(pos: Tensor, neg: Tensor, theta: Tensor, *, C: float, pos_weight: float,
         bias_mult: float, loss: str, tol: float, max_iter: int) -> tuple[Tensor, float]:
    x, y, c = _problem(pos, neg, pos_weight)
    deltas = HINGE_CONTINUATION if loss == "hinge" else (0.0,)
    for delta in deltas:
        theta = _newton(x, y, c, theta, C=C, bias_mult=bias_mult, loss=loss, delta=delta,
                        tol=tol, max_iter=max_iter)
    return theta, _objective(x, y, c, theta, C=C, bias_mult=bias_mult, loss=loss)


def liblinear_available() -> bool:
    """Whether scikit-learn (liblinear's ``LinearSVC``) can be imported."""
    try:
        import sklearn.svm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_solver(solver: str, device: torch.device) -> str:
    """``"torch"`` or ``"liblinear"`` for ``solver`` in ``SOLVERS`` and features on ``device``."""
    if solver not in SOLVERS:
        raise ValueError(f"resolve_solver: solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "auto":
        return "liblinear" if torch.device(device).type == "cpu" and liblinear_available() else "torch"
    if solver == "liblinear" and not liblinear_available():
        raise ImportError("resolve_solver: solver='liblinear' needs scikit-learn, which is optional: "
                          "pip install scikit-learn (or detkit[liblinear]), or use solver='torch'")
    return solver


def _fit_liblinear(pos: Tensor, neg: Tensor, *, C: float, pos_weight: float, bias_mult: float,
                   loss: str) -> tuple[Tensor, float]:
    """The problem of the module docstring by liblinear: ``class_weight`` scales ``C`` per class
    (``c_i``), ``intercept_scaling`` appends the constant feature ``bias_mult`` whose weight is
    ``w_b`` (penalised like any weight), so ``intercept_ = bias_mult * w_b``. No warm start."""
    import numpy as np
    from sklearn.svm import LinearSVC

    x, y, c = _problem(pos, neg, pos_weight)
    clf = LinearSVC(C=C, class_weight={1: float(pos_weight), -1: 1.0}, loss=loss, dual=loss == "hinge",
                    fit_intercept=True, intercept_scaling=bias_mult, tol=LIBLINEAR_TOL,
                    max_iter=LIBLINEAR_MAX_ITER)
    clf.fit(x.detach().to("cpu", torch.float64).numpy(), y.cpu().numpy())
    theta = torch.from_numpy(np.r_[clf.coef_[0], clf.intercept_[0] / bias_mult]).to(pos)
    return theta, _objective(x, y, c, theta, C=C, bias_mult=bias_mult, loss=loss)


def _chunks(neg_pool: Tensor | Callable[[], Iterable[Tensor]], chunk_size: int) -> Iterator[Tensor]:
    if callable(neg_pool):
        yield from neg_pool()
    else:
        yield from torch.split(neg_pool, chunk_size)


def train_svm(pos: Tensor, neg_pool: Tensor | Callable[[], Iterable[Tensor]], *, C: float = 0.001,
              pos_weight: float = 2.0, loss: str = "hinge", bias_mult: float = 10.0,
              rounds: int = 1, chunk_size: int = 2000, hard_thresh: float = -1.0001,
              evict_thresh: float = -1.2, retrain_limit: int = 2000, cache_limit: int | None = None,
              tol: float = 1e-6, max_iter: int = 100, seed: int = 0, solver: str = "torch") -> LinearSVM:
    """Train one class's linear SVM with R-CNN's hard-negative mining (module docstring).

    Args:
        pos: ``(P, D)`` positive features (the class's ground-truth boxes).
        neg_pool: ``(Q, D)`` negative features, visited in chunks of ``chunk_size`` rows, or a
            zero-argument callable returning an iterable of ``(Q_j, D)`` chunks (e.g. one image's
            negatives at a time from a disk cache), called once per round in the same order.
            Chunks are moved to ``pos``'s device and dtype.
        C, pos_weight, loss, bias_mult: the objective (R-CNN: 0.001, 2, hinge, 10).
        rounds: passes over the negative pool (R-CNN's ``max_hard_epochs``: 1).
        hard_thresh: negatives scoring above it are hard and get cached (R-CNN: -1.0001).
        evict_thresh: cached negatives scoring below it after a retrain are evicted (R-CNN: -1.2).
        retrain_limit: retrain once more than this many negatives were added (R-CNN: 2000).
        cache_limit: optional cap on cached negatives; when exceeded the highest-scoring (hardest)
            are kept (a random subset of the first chunk before any model exists).
        tol, max_iter: Newton stopping rule (gradient norm relative to its start) and cap.
        seed: for the random subset above.
        solver: ``"torch"`` (Newton, on the features' device), ``"liblinear"`` (scikit-learn, CPU)
            or ``"auto"`` (liblinear for CPU features when scikit-learn is installed, else torch).

    Returns:
        ``LinearSVM`` with ``weight (D,)`` and ``bias ()`` on ``pos``'s device.
    """
    if loss not in LOSSES:
        raise ValueError(f"train_svm: loss must be one of {LOSSES}, got {loss!r}")
    if pos.dim() != 2 or len(pos) == 0:
        raise ValueError(f"train_svm: pos must be a non-empty (P, D) tensor, got {tuple(pos.shape)}")
    if C <= 0 or pos_weight <= 0 or bias_mult <= 0 or rounds < 1:
        raise ValueError(f"train_svm: C ({C}), pos_weight ({pos_weight}), bias_mult ({bias_mult}) "
                         f"and rounds ({rounds}) must be positive")
    solver = resolve_solver(solver, pos.device)
    dtype = pos.dtype if pos.dtype == torch.float64 else torch.float32
    pos = pos.to(dtype)
    d = pos.shape[1]
    gen = torch.Generator().manual_seed(seed)
    theta = None
    cache = pos.new_zeros(0, d)
    cache_ids = torch.zeros(0, dtype=torch.long, device=pos.device)
    added_ids: list[Tensor] = []
    num_added, log = 0, []

    def score(feats: Tensor) -> Tensor:
        return feats @ theta[:-1] + bias_mult * theta[-1]

    for rnd in range(rounds):
        stream, offset, j = _chunks(neg_pool, chunk_size), 0, 0
        chunk = next(stream, None)
        while chunk is not None:
            nxt = next(stream, None)  # look ahead to know the last chunk of the last round
            chunk = chunk.to(pos.device, dtype)
            if chunk.dim() != 2 or chunk.shape[1] != d:
                raise ValueError(f"train_svm: negative chunk {j} has shape {tuple(chunk.shape)}, "
                                 f"expected (Q, {d})")
            ids = torch.arange(offset, offset + len(chunk), device=pos.device)
            offset += len(chunk)
            first = theta is None
            if first:
                keep = torch.ones(len(chunk), dtype=torch.bool, device=pos.device)
            else:  # hard negatives not cached yet (R-CNN avoids duplicate keys)
                keep = (score(chunk) > hard_thresh) & ~torch.isin(ids, cache_ids)
            cache, cache_ids = torch.cat((cache, chunk[keep])), torch.cat((cache_ids, ids[keep]))
            added_ids.append(ids[keep])
            num_added += int(keep.sum())
            if cache_limit is not None and len(cache) > cache_limit:
                order = (torch.randperm(len(cache), generator=gen).to(pos.device) if first
                         else score(cache).argsort(descending=True))
                cache, cache_ids = cache[order[:cache_limit]], cache_ids[order[:cache_limit]]
            last = rnd == rounds - 1 and nxt is None
            if (first or num_added > retrain_limit or last) and len(cache) > 0:
                start = theta if theta is not None else pos.new_zeros(d + 1)
                if solver == "liblinear":
                    theta, obj = _fit_liblinear(pos, cache, C=C, pos_weight=pos_weight, bias_mult=bias_mult,
                                                loss=loss)
                else:
                    theta, obj = _fit(pos, cache, start, C=C, pos_weight=pos_weight,
                                      bias_mult=bias_mult, loss=loss, tol=tol, max_iter=max_iter)
                easy = score(cache) < evict_thresh
                log.append({"round": rnd, "chunk": j, "num_pos": len(pos), "num_neg": len(cache),
                            "added": torch.cat(added_ids).cpu(), "evicted": cache_ids[easy].cpu(),
                            "objective": obj, "solver": solver})
                cache, cache_ids = cache[~easy], cache_ids[~easy]
                added_ids, num_added = [], 0
            chunk, j = nxt, j + 1
    if theta is None:
        raise ValueError("train_svm: the negative pool is empty; an SVM needs negatives")
    return LinearSVM(weight=theta[:-1].clone(), bias=bias_mult * theta[-1], log=log)


def train_class_svms(features: Tensor, labels: Tensor, gt_mask: Tensor,
                     overlaps: Tensor | None = None, *, num_classes: int | None = None,
                     neg_iou: float = 0.3, image_ids: Tensor | None = None,
                     **svm_kwargs) -> tuple[Tensor, Tensor]:
    """Train R-CNN's ``K`` one-vs-rest SVMs on cached region features.

    Args:
        features: ``(M, D)`` features of all training regions (ground-truth boxes and proposals),
            e.g. fc7, already scaled with ``feature_scale``.
        labels: ``(M,)`` int64: the class ``0..K-1`` of each ground-truth row; for proposal rows,
            the class they overlap (IoU >= ``neg_iou``) or -1 for "neither" — used for negatives
            only when ``overlaps`` is not given.
        gt_mask: ``(M,)`` bool, True for ground-truth boxes (the only positives, as in R-CNN).
        overlaps: optional ``(M, K)`` IoU of each row with the closest ground truth of each class
            (R-CNN's ``d.overlap``; a ground-truth row has 1 for its own class): class ``k``'s
            negatives are the rows with ``overlaps[:, k] < neg_iou``, ground truth of other
            classes included. Without it, negatives of ``k`` are the rows whose label is not
            ``k`` (exact when no region overlaps two classes by ``neg_iou``).
        num_classes: ``K`` (default: ``overlaps.shape[1]`` or ``labels.max() + 1``).
        neg_iou: R-CNN's 0.3.
        image_ids: optional ``(M,)`` image index of each row: negatives are then mined image by
            image as in R-CNN (otherwise in chunks of ``chunk_size`` rows).
        **svm_kwargs: passed to ``train_svm`` (``C``, ``pos_weight``, ``loss``, ...).

    Returns:
        ``weights (K, D)`` and ``biases (K,)``: scores are ``features @ weights.T + biases``.
    """
    m = features.shape[0]
    if labels.shape != (m,) or gt_mask.shape != (m,):
        raise ValueError(f"train_class_svms: labels {tuple(labels.shape)} and gt_mask "
                         f"{tuple(gt_mask.shape)} must both be ({m},)")
    if overlaps is not None and (overlaps.dim() != 2 or overlaps.shape[0] != m):
        raise ValueError(f"train_class_svms: overlaps must be ({m}, K), got {tuple(overlaps.shape)}")
    k_total = num_classes or (overlaps.shape[1] if overlaps is not None else int(labels.max()) + 1)
    labels, gt_mask = labels.to(features.device), gt_mask.to(features.device).bool()
    weights, biases = [], []
    for k in range(k_total):
        pos = features[gt_mask & (labels == k)]
        if len(pos) == 0:
            raise ValueError(f"train_class_svms: class {k} has no ground-truth boxes to train on")
        # Every row (other classes' ground truth included, as in R-CNN's feature cache) that
        # does not overlap a class-k ground truth is a negative of class k.
        if overlaps is not None:
            neg_rows = overlaps[:, k].to(features.device) < neg_iou
        else:
            neg_rows = labels != k
        if image_ids is None:
            pool: Tensor | Callable[[], Iterable[Tensor]] = features[neg_rows]
        else:
            img = image_ids.to(features.device)
            per_image = [features[neg_rows & (img == i)] for i in torch.unique(img[neg_rows])]
            pool = lambda chunks=per_image: iter(chunks)  # noqa: E731 (R-CNN's per-image order)
        svm = train_svm(pos, pool, **svm_kwargs)
        weights.append(svm.weight)
        biases.append(svm.bias)
    return torch.stack(weights), torch.stack(biases)
