"""Interrupted training, bad checkpoints and numerical faults, through tools/train.py (CPU subprocesses).

Complements tests/engine/test_checkpoint.py (atomic write under a crash mid-write, corrupt /
truncated / foreign files, pickled code refused) and tests/engine/test_trainer.py (in-process
exact resume, NaN loss stops or is skipped): here the real command is killed with SIGKILL.
"""
import ast
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from detkit.engine.checkpoint import load_checkpoint

from ._cli import ENV, PY, REPO, make_data, run, train_cmd, weights

ITERS, EVERY = 12, 2
RUN = ["deterministic=true", f"solver.max_iters={ITERS}", f"checkpoint_every={EVERY}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted deterministic run of ITERS iterations, and its data set."""
    tmp = tmp_path_factory.mktemp("interrupt")
    data = make_data(tmp / "data")
    r = run(train_cmd(tmp / "ref", data, *RUN))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, data, tmp / "ref" / "last.pt"


def test_sigkill_at_random_point_then_resume_gives_identical_weights(reference):
    tmp, data, ref_ckpt = reference
    run_dir = tmp / "killed"
    rng = random.Random()  # a different kill point every time; printed on failure
    delay = rng.uniform(0.0, 0.4)  # mostly mid-training; on a fast machine possibly in the final evaluation
    proc = subprocess.Popen(train_cmd(run_dir, data, *RUN), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").exists():  # the first checkpoint (iteration EVERY) is on disk
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    proc.stderr.close()
    # Never a half-written last.pt: what is there loads, at a checkpoint iteration (ITERS when the
    # kill came after training, during the final test evaluation: resume must then finish too).
    at_kill = load_checkpoint(run_dir / "last.pt")["iteration"]
    assert at_kill % EVERY == 0 and EVERY <= at_kill <= ITERS, f"delay {delay:.3f}s"

    r = run(train_cmd(run_dir, data, *RUN, "resume=true"))
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = weights(run_dir / "last.pt"), weights(ref_ckpt)
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == ITERS
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"killed after {delay:.3f}s (checkpoint {at_kill}); differ: {differ[:5]}"


def test_corrupt_checkpoint_on_resume_is_a_clear_error(reference, tmp_path):
    _, data, _ = reference
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04 this is not a whole checkpoint")
    r = run(train_cmd(run_dir, data, "solver.max_iters=2", "resume=true"))
    assert r.returncode == 1
    assert "last.pt: cannot read checkpoint (corrupt or truncated file?)" in r.stderr
    assert "Traceback" not in r.stderr
    assert (run_dir / "last.pt").read_bytes().startswith(b"PK\x03\x04 this is not")  # left for inspection


def test_resume_with_a_different_class_count_is_refused(reference, tmp_path):
    _, data, ref_ckpt = reference
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(ref_ckpt, run_dir / "last.pt")
    before = (run_dir / "last.pt").read_bytes()
    # the data now has 2 classes, the checkpoint 4: the changed config is refused first ...
    r = run(train_cmd(run_dir, data, f"solver.max_iters={ITERS + 2}", "resume=true",
                      "data.class_names=[circle,cross]"))
    assert r.returncode == 1 and "data.class_names" in r.stderr and "resume_changed_config" in r.stderr
    # ... and, insisted on, its predictor weights cannot be loaded
    r = run(train_cmd(run_dir, data, f"solver.max_iters={ITERS + 2}", "resume=true",
                      "data.class_names=[circle,cross]", "resume_changed_config=true"))
    assert r.returncode == 1
    assert "last.pt: weights do not fit the model built from its config" in r.stderr
    assert "shape mismatch" in r.stderr and "Traceback" not in r.stderr
    assert (run_dir / "last.pt").read_bytes() == before


def test_exploding_learning_rate_stops_with_last_good_checkpoint(reference, tmp_path):
    _, data, _ = reference
    run_dir = tmp_path / "run"
    r = run(train_cmd(run_dir, data, "solver.lr=1e10", "solver.max_iters=12", "checkpoint_every=1"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "non-finite" in r.stderr and "Traceback" not in r.stderr
    if (run_dir / "last.pt").exists():  # whatever was written before the blow-up is finite
        ckpt = load_checkpoint(run_dir / "last.pt")
        assert ckpt["iteration"] < 12
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def _torch_load_calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == "torch":
                yield node


def test_every_torch_load_uses_weights_only():
    files = [p for d in ("detkit", "tools") for p in sorted((REPO / d).rglob("*.py"))]
    calls, unsafe = 0, []
    for path in files:
        for call in _torch_load_calls(path):
            calls += 1
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert calls > 0  # the scan does see the checkpoint loader
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    # and no torch.load reached through another name (from torch import load / serialization)
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "from torch import load" not in text and "torch.serialization.load(" not in text, path


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_killed_writer_never_replaces_a_good_checkpoint(tmp_path):
    """SIGKILL (not a Python exception) in the middle of torch.save: last.pt stays the old, whole file."""
    code = (
        "import os, signal, torch\n"
        "from detkit.engine import checkpoint as ck\n"
        "from detkit.engine.checkpoint import CheckpointManager, make_state\n"
        "m = torch.nn.Linear(3, 2)\n"
        f"mgr = CheckpointManager({str(tmp_path)!r})\n"
        "mgr.save(make_state(model=m, iteration=1))\n"
        "real = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    real({'partial': torch.zeros(10000)}, f); f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "ck.torch.save = dying_save\n"
        "mgr.save(make_state(model=m, iteration=2))\n"
    )
    r = subprocess.run([PY, "-c", code],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(n.startswith(".last.pt.") and n.endswith(".tmp") for n in leftovers), leftovers
