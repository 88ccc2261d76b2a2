"""A finished run is never overwritten unasked, nor resumed under another config (tools/train.py).

Re-running a command whose run folder holds a run stops at once with one line naming the folder and
the ways out; ``resume=true`` continues it, ``overwrite=true`` starts over; ``resume=true`` with a
changed setting lists the keys unless ``resume_changed_config=true``.
"""
import pytest

from detkit.engine.checkpoint import load_checkpoint

from ._cli import make_data, run, train_cmd

ITERS = ["solver.max_iters=2", "checkpoint_every=1"]


def _state(run_dir):
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runfolder")
    data = make_data(tmp / "data", num_images=6)
    r = run(train_cmd(tmp / "run", data, *ITERS))
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, data


def test_rerunning_the_command_stops_and_touches_nothing(finished):
    tmp, data = finished
    before = _state(tmp / "run")
    r = run(train_cmd(tmp / "run", data, *ITERS))
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and str(tmp / "run") in err[0]
    assert "resume=true" in err[0] and "overwrite=true" in err[0] and "run_dir=" in err[0]
    assert _state(tmp / "run") == before  # not even Hydra's .hydra/ files changed


def test_resume_with_a_changed_setting_lists_the_keys(finished):
    tmp, data = finished
    before = _state(tmp / "run")
    r = run(train_cmd(tmp / "run", data, *ITERS, "resume=true", "solver.lr=0.5", "seed=3"))
    assert r.returncode == 1
    assert "solver.lr" in r.stderr and "seed" in r.stderr and "resume_changed_config=true" in r.stderr
    assert _state(tmp / "run") == before


def test_resume_may_lengthen_the_run(tmp_path, finished):
    _, data = finished
    r = run(train_cmd(tmp_path / "run", data, *ITERS))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run(train_cmd(tmp_path / "run", data, "solver.max_iters=3", "checkpoint_every=1", "resume=true"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 3


def test_resume_changed_config_and_overwrite(tmp_path, finished):
    _, data = finished
    assert run(train_cmd(tmp_path / "run", data, *ITERS)).returncode == 0
    r = run(train_cmd(tmp_path / "run", data, "solver.max_iters=3", "checkpoint_every=1", "resume=true",
                      "solver.lr=0.002", "resume_changed_config=true"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["iteration"] == 3 and ckpt["config"]["solver"]["lr"] == 0.002
    r = run(train_cmd(tmp_path / "run", data, *ITERS, "overwrite=true"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 2  # started over
