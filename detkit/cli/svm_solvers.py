"""Time R-CNN's per-class SVM solve: detkit's torch Newton solver against scikit-learn's liblinear.

    python tools/svm_solvers.py --num-pos 500 --num-neg 10000 20000 --repeats 3 --out svm.json
    python tools/svm_solvers.py --loss squared_hinge --device cpu cuda --liblinear-tols 1e-4

Builds a seeded, fc7-like problem (``--dim`` non-negative features: ReLU of a Gaussian, positives
shifted along a class direction, a fraction of "partial overlap" negatives half way), scales it to
R-CNN's mean norm 20 (``detkit.rcnn.svm.feature_scale``, as stage 2 does) and solves one class's
SVM once (one retrain of the hard-negative mining loop) with the settings stage 2 passes
(``configs/method/rcnn.yaml`` ``stages.svm``: C, pos_weight, loss, bias_mult; ``--C`` etc.
override). For each solver it reports the median wall time of ``--repeats`` runs, the primal
objective of its ``(w, b)`` (one shared function, exact hinge, float64), train accuracy and the sign
agreement of its decision function with detkit's. scikit-learn is not a detkit dependency: when it
is not importable the liblinear rows are skipped and the tool says so. Prints a table; ``--out``
writes JSON with the machine and the git commit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path


import numpy as np
import torch

from detkit.engine.config import CONFIG_DIR
from detkit.utils.provenance import git_commit, machine_info
from detkit.rcnn.svm import LOSSES, feature_scale, train_svm

SCHEMA = "detkit-svm-solvers/1.0"
SKIPPED = "liblinear skipped: scikit-learn is not installed (it is not a detkit dependency)"


class SolverBenchError(ValueError):
    """Bad command-line input (names the option and the problem)."""


def stage_settings(path: Path = CONFIG_DIR / "method" / "rcnn.yaml") -> dict:
    """The objective settings stage 2 (``detkit.engine.stages.fit_svms``) passes to the solver."""
    from omegaconf import OmegaConf

    try:
        svm = OmegaConf.to_container(OmegaConf.load(path))["stages"]["svm"]
    except (OSError, KeyError, TypeError) as exc:
        raise SolverBenchError(f"svm_solvers.py: cannot read stages.svm from {path}: {exc}") from exc
    return {k: svm[k] for k in ("C", "pos_weight", "loss", "bias_mult")}


def make_problem(num_pos: int, num_neg: int, dim: int, *, seed: int = 0, signal: float = 1.0,
                 hard_fraction: float = 0.1, active_fraction: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded fc7-like binary problem, already scaled to mean norm 20 as stage 2 does.

    ``x = relu(g - 0.5 + s * u)`` with ``g ~ N(0, I)`` (about 70 % zeros, like a ReLU layer),
    ``u`` a 0/1 class direction on ``active_fraction`` of the dims; ``s = signal`` for positives
    (ground truth), ``signal / 2`` for ``hard_fraction`` of the negatives (IoU < 0.3 regions that
    still show part of the object), 0 for the rest.

    Returns:
        ``x (P + Q, D)`` float32 (positives first) and ``y (P + Q,)`` float32 in ``{+1, -1}``.
    """
    gen = torch.Generator().manual_seed(seed)
    u = (torch.rand(dim, generator=gen) < active_fraction).float()
    n_hard = int(round(hard_fraction * num_neg))
    s = torch.cat((torch.full((num_pos,), signal), torch.full((n_hard,), signal / 2),
                   torch.zeros(num_neg - n_hard)))
    x = (torch.randn(num_pos + num_neg, dim, generator=gen) - 0.5 + s[:, None] * u).clamp_(min=0)
    x.mul_(feature_scale(x))
    y = torch.cat((torch.ones(num_pos), -torch.ones(num_neg)))
    return x, y


def primal_objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, *, C: float,
                     pos_weight: float, bias_mult: float, loss: str) -> float:
    """liblinear's primal (``detkit.rcnn.svm``'s docstring) at ``score = x . w + b``, float64:
    ``1/2 |w|^2 + 1/2 (b / bias_mult)^2 + C sum_i c_i loss(y_i score_i)``, exact (unsmoothed) hinge,
    ``c_i = pos_weight`` for positives, 1 for negatives."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    r = np.maximum(0.0, 1.0 - y * (x @ w + b))
    c = np.where(y > 0, pos_weight, 1.0)
    data = (c * (r if loss == "hinge" else r * r)).sum()
    return float(0.5 * w @ w + 0.5 * (b / bias_mult) ** 2 + C * data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solve_detkit(x: torch.Tensor, y: torch.Tensor, device: torch.device, *, C: float, pos_weight: float,
                 loss: str, bias_mult: float, repeats: int = 3) -> dict:
    """detkit's solver, one solve of all rows (one chunk = one training, no mining), as stage 2
    calls it (``train_svm(..., C, pos_weight, loss, bias_mult)``, float32 on ``device``)."""
    pos, neg = x[y > 0].to(device), x[y < 0].to(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        svm = train_svm(pos, neg, C=C, pos_weight=pos_weight, loss=loss, bias_mult=bias_mult,
                        chunk_size=len(neg))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"w": svm.weight.double().cpu().numpy(), "b": float(svm.bias), "times_s": times,
            "solver_objective": svm.log[-1]["objective"]}


def solve_liblinear(x: torch.Tensor, y: torch.Tensor, *, C: float, pos_weight: float, loss: str,
                    bias_mult: float, tol: float, max_iter: int, repeats: int = 3) -> dict:
    """scikit-learn's ``LinearSVC`` (liblinear) on the same primal problem.

    Exact mapping (liblinear: ``-c C -w1 pos_weight -B bias_mult -s 3|2 -e tol``):
    ``C = C`` and ``class_weight = {+1: pos_weight, -1: 1}`` (per-sample ``C_i = C * c_i``);
    ``fit_intercept=True, intercept_scaling = bias_mult`` (liblinear appends a constant feature
    ``bias_mult`` whose weight ``w_b`` is regularised like the others, ``intercept_ = bias_mult *
    w_b``: detkit's ``b``); ``penalty='l2'``; ``loss='hinge'`` needs ``dual=True`` (``-s 3``, R-CNN's
    solver: dual coordinate descent); ``loss='squared_hinge'`` uses ``dual=False`` (``-s 2``, primal
    trust-region Newton, as detkit's docstring compares). ``x`` is handed over as the float32
    array stage 2 holds (``.cpu().numpy()``); liblinear's float64 copy is part of the time.

    Raises ImportError when scikit-learn is not installed.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    xn, yn = x.cpu().numpy(), y.cpu().numpy()
    times, converged = [], True
    for _ in range(repeats):
        clf = LinearSVC(C=C, class_weight={1: pos_weight, -1: 1.0}, loss=loss, penalty="l2",
                        dual=loss == "hinge", fit_intercept=True, intercept_scaling=bias_mult,
                        tol=tol, max_iter=max_iter)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(xn, yn)
            times.append(time.perf_counter() - t0)
        converged = converged and not any(issubclass(c.category, ConvergenceWarning) for c in caught)
    return {"w": clf.coef_[0].astype(np.float64), "b": float(clf.intercept_[0]), "times_s": times,
            "converged": converged, "n_iter": int(np.max(clf.n_iter_))}


def _summary(name: str, device: str, sol: dict, x: np.ndarray, y: np.ndarray, ref_scores: np.ndarray | None,
             settings: dict) -> tuple[dict, np.ndarray]:
    scores = x @ sol["w"] + sol["b"]
    row = {"solver": name, "device": device, "times_s": sol["times_s"],
           "median_s": statistics.median(sol["times_s"]),
           "objective": primal_objective(x, y, sol["w"], sol["b"], **settings),
           "train_accuracy": float(np.mean(np.sign(scores) == y)),
           "agreement_with_detkit": (float(np.mean(np.sign(scores) == np.sign(ref_scores)))
                                     if ref_scores is not None else 1.0),
           "bias": sol["b"], "weight_norm": float(np.linalg.norm(sol["w"]))}
    row.update({k: sol[k] for k in ("solver_objective", "converged", "n_iter", "tol") if k in sol})
    return row, scores


def run_problem(num_pos: int, num_neg: int, args: argparse.Namespace, settings: dict) -> dict:
    x, y = make_problem(num_pos, num_neg, args.dim, seed=args.seed)
    xn, yn = x.double().numpy(), y.double().numpy()
    rows, ref, liblinear = [], None, None
    for dev in args.device:
        sol = solve_detkit(x, y, torch.device(dev), repeats=args.repeats, **settings)
        row, scores = _summary("detkit-newton", dev, sol, xn, yn, ref, settings)
        ref = scores if ref is None else ref
        rows.append(row)
    for tol in args.liblinear_tols:
        try:
            sol = solve_liblinear(x, y, tol=tol, max_iter=args.liblinear_max_iter, repeats=args.repeats,
                                  **settings)
        except ImportError:
            liblinear = SKIPPED
            break
        import sklearn

        liblinear = f"scikit-learn {sklearn.__version__}"
        sol["tol"] = tol
        rows.append(_summary(f"liblinear tol={tol:g}", "cpu", sol, xn, yn, ref, settings)[0])
    best = min(r["objective"] for r in rows)
    for r in rows:
        r["objective_gap"] = (r["objective"] - best) / abs(best)  # relative to the lowest row
    return {"num_pos": num_pos, "num_neg": num_neg, "dim": args.dim, "rows": rows, "liblinear": liblinear}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-pos", type=int, default=500, help="positives (ground-truth boxes)")
    p.add_argument("--num-neg", type=int, nargs="+", default=[20000], help="negatives, one problem each")
    p.add_argument("--dim", type=int, default=4096, help="feature dimension (fc7: 4096)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per solver (median reported)")
    p.add_argument("--device", nargs="+", default=["cpu"], help="devices for detkit's solver")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--C", type=float, default=None, help="default: configs/method/rcnn.yaml")
    p.add_argument("--pos-weight", type=float, default=None)
    p.add_argument("--loss", choices=LOSSES, default=None)
    p.add_argument("--bias-mult", type=float, default=None)
    p.add_argument("--liblinear-tols", type=float, nargs="*", default=[1e-4, 0.1],
                   help="LinearSVC tol values (1e-4: scikit-learn's default; 0.1: liblinear's "
                        "command-line default for -s 3, which R-CNN used)")
    p.add_argument("--liblinear-max-iter", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="JSON file")
    args = p.parse_args(argv)
    if args.num_pos < 1 or min(args.num_neg) < 1 or args.dim < 1 or args.repeats < 1:
        p.error("--num-pos, --num-neg, --dim and --repeats must be positive")
    for dev in args.device:
        try:
            d = torch.device(dev)
        except RuntimeError as exc:
            raise SolverBenchError(f"svm_solvers.py: --device {dev!r}: {exc}") from exc
        if d.type == "cuda" and not torch.cuda.is_available():
            raise SolverBenchError(f"svm_solvers.py: --device {dev}: CUDA is not available here")
    return args


def format_table(result: dict) -> str:
    s = result["settings"]
    lines = [f"SVM solve: C={s['C']:g} pos_weight={s['pos_weight']:g} loss={s['loss']} "
             f"bias_mult={s['bias_mult']:g}; {result['machine']['cpu']} "
             f"({result['machine']['cpu_cores']} cores, torch threads {result['machine']['torch_threads']})",
             f"{'pos':>5} {'neg':>7} {'dim':>5}  {'solver':<20} {'device':<7} {'median s':>9} "
             f"{'objective':>12} {'gap':>9} {'train acc':>9} {'agree':>7}"]
    for prob in result["problems"]:
        for r in prob["rows"]:
            lines.append(f"{prob['num_pos']:>5} {prob['num_neg']:>7} {prob['dim']:>5}  {r['solver']:<20} "
                         f"{r['device']:<7} {r['median_s']:>9.3f} {r['objective']:>12.6f} "
                         f"{100 * r['objective_gap']:>8.4f}% {r['train_accuracy']:>9.4f} "
                         f"{r['agreement_with_detkit']:>7.4f}"
                         + ("" if r.get("converged", True) else "  (liblinear: max_iter reached)"))
        if prob["liblinear"] == SKIPPED:
            lines.append(f"  {SKIPPED}")
    lines.append("gap: objective above the lowest of the problem's rows; agree: sign agreement with "
                 "detkit's decision function on the training rows")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = stage_settings()
    overrides = {"C": args.C, "pos_weight": args.pos_weight, "loss": args.loss, "bias_mult": args.bias_mult}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings = {"C": float(settings["C"]), "pos_weight": float(settings["pos_weight"]),
                "loss": str(settings["loss"]), "bias_mult": float(settings["bias_mult"])}
    result = {"schema": SCHEMA, "command": "detkit svm-solvers " + " ".join(argv or sys.argv[1:]),
              "settings": settings, "seed": args.seed, "repeats": args.repeats,
              "machine": machine_info(torch.device(args.device[0])), "git": git_commit(),
              "problems": [run_problem(args.num_pos, q, args, settings) for q in args.num_neg]}
    print(format_table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return result


def cli(argv: list[str] | None = None) -> int:
    """The command: ``main`` with its errors as one line (exit status 1)."""
    try:
        main(argv)
    except SolverBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
