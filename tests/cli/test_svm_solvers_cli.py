"""tools/svm_solvers.py: the problem it builds, the objective it reports, its JSON, and (only where
scikit-learn is importable, e.g. /work/venv211) liblinear on the same primal problem."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import minimize
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]
TINY = ["--num-pos", "20", "--num-neg", "200", "--dim", "16", "--repeats", "1"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("svm_solvers")


def _hide_sklearn(monkeypatch):
    # None in sys.modules makes every "import sklearn..." raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")] + ["sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)


def _primal_by_hand(x, y, w, b, *, C, pos_weight, bias_mult, loss):
    """liblinear's primal, one sample at a time (independent of the tool's vectorised version)."""
    total = 0.5 * sum(v * v for v in w) + 0.5 * (b / bias_mult) ** 2
    for xi, yi in zip(x, y):
        r = max(0.0, 1.0 - yi * (sum(a * v for a, v in zip(xi, w)) + b))
        total += C * (pos_weight if yi > 0 else 1.0) * (r if loss == "hinge" else r * r)
    return total


def test_problem_is_fc7_like_and_seeded(tool):
    x, y = tool.make_problem(30, 300, 64, seed=3)
    assert x.shape == (330, 64) and y.shape == (330,)
    assert (y[:30] == 1).all() and (y[30:] == -1).all()  # positives first
    assert (x >= 0).all() and 0.5 < float((x == 0).float().mean()) < 0.85  # ReLU-sparse
    assert float(x.norm(dim=1).mean()) == pytest.approx(20.0, rel=1e-5)  # R-CNN's scaling
    assert torch.equal(x, tool.make_problem(30, 300, 64, seed=3)[0])
    assert not torch.equal(x, tool.make_problem(30, 300, 64, seed=4)[0])


def test_settings_are_stage2s(tool):
    svm = yaml.safe_load((REPO / "configs" / "method" / "rcnn.yaml").read_text())["stages"]["svm"]
    assert tool.stage_settings() == {k: svm[k] for k in ("C", "pos_weight", "loss", "bias_mult")}
    with pytest.raises(ValueError, match="stages.svm"):
        tool.stage_settings(REPO / "configs" / "train.yaml")


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_detkit_objective_is_the_primal_of_its_solution(tool, loss):
    x, y = tool.make_problem(8, 40, 6, seed=1)
    s = {"C": 0.05, "pos_weight": 2.0, "bias_mult": 10.0, "loss": loss}
    sol = tool.solve_detkit(x, y, torch.device("cpu"), repeats=1, **s)
    by_hand = _primal_by_hand(x.double().tolist(), y.tolist(), sol["w"].tolist(), sol["b"], **s)
    row, scores = tool._summary("detkit-newton", "cpu", sol, x.double().numpy(), y.double().numpy(), None, s)
    assert row["objective"] == pytest.approx(by_hand, rel=1e-10)
    assert sol["solver_objective"] == pytest.approx(by_hand, rel=1e-4)  # the solver's own float32 value
    assert row["train_accuracy"] == pytest.approx(float(np.mean(np.sign(scores) == y.numpy())))
    if loss == "squared_hinge":  # smooth: an independent optimiser must not find a lower objective
        xn, yn = x.double().numpy(), y.double().numpy()
        c = np.where(yn > 0, 2.0, 1.0)

        def f(t):  # t = (w, w_b); b = bias_mult * w_b
            r = np.maximum(0, 1 - yn * (xn @ t[:-1] + 10.0 * t[-1]))
            grad_r = -2 * s["C"] * c * r * yn
            return 0.5 * t @ t + s["C"] * (c * r * r).sum(), t + np.append(xn.T @ grad_r, 10.0 * grad_r.sum())

        ref = minimize(f, np.zeros(7), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
        assert row["objective"] == pytest.approx(ref.fun, rel=1e-5)


def test_cli_json_and_liblinear_skipped(tool, tmp_path, monkeypatch, capsys):
    _hide_sklearn(monkeypatch)
    out = tmp_path / "svm.json"
    tool.main(TINY + ["--num-neg", "150", "200", "--loss", "squared_hinge", "--out", str(out)])
    printed = capsys.readouterr().out
    assert tool.SKIPPED in printed and "scikit-learn is not installed" in printed
    data = json.loads(out.read_text())
    assert data["schema"] == tool.SCHEMA
    assert data["settings"] == {**tool.stage_settings(), "loss": "squared_hinge"}
    assert {"cpu", "cpu_cores", "torch_threads", "torch"} <= set(data["machine"])
    assert set(data["git"]) == {"commit", "dirty"}
    assert [p["num_neg"] for p in data["problems"]] == [150, 200]
    for prob in data["problems"]:
        assert prob["liblinear"] == tool.SKIPPED and prob["num_pos"] == 20 and prob["dim"] == 16
        (row,) = prob["rows"]  # detkit only
        assert row["solver"] == "detkit-newton" and row["device"] == "cpu"
        assert len(row["times_s"]) == 1 and row["median_s"] == row["times_s"][0] > 0
        assert row["objective_gap"] == 0 and row["agreement_with_detkit"] == 1.0
        assert 0.5 <= row["train_accuracy"] <= 1
        x, y = tool.make_problem(20, prob["num_neg"], 16, seed=0)  # the CLI's problem, rebuilt
        s = data["settings"]
        sol = tool.solve_detkit(x, y, torch.device("cpu"), repeats=1, **s)
        assert row["objective"] == pytest.approx(
            tool.primal_objective(x.numpy(), y.numpy(), sol["w"], sol["b"], **s), rel=1e-6)


def test_bad_device_is_a_clear_error(tool):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        tool.parse_args(TINY + ["--device", "cuda"])


@pytest.mark.parametrize("loss", ["hinge", "squared_hinge"])
def test_liblinear_reaches_detkits_objective(tool, loss):
    pytest.importorskip("sklearn", reason="scikit-learn not installed (not a detkit dependency); "
                                          "run under /work/venv211 to compare with liblinear")
    args = tool.parse_args(["--num-pos", "40", "--num-neg", "400", "--dim", "32", "--repeats", "1",
                            "--liblinear-tols", "1e-4", "--liblinear-max-iter", "20000"])
    s = {**tool.stage_settings(), "loss": loss}
    prob = tool.run_problem(40, 400, args, s)
    detkit, lib = prob["rows"]
    assert lib["solver"] == "liblinear tol=0.0001" and lib["converged"]
    assert lib["objective"] == pytest.approx(detkit["objective"], rel=0.01)
    assert lib["agreement_with_detkit"] > 0.97
