"""Several processes: torchrun --nproc_per_node=2 (gloo, CPU) against one process, same global batch.

Faster R-CNN draws its RPN/RoI minibatches at random, so runs with different process counts see
different samples and cannot give equal weights; the DDP machinery (sharding, gradient averaging,
one writer) is therefore proved with tests/engine/tiny_detector.py (no random sampling) through
the real Trainer (tests/reliability/ddp_tiny.py), and a Faster R-CNN torchrun of tools/train.py is
shown to finish with one set of outputs. Sampler sharding itself: tests/data/test_sampler.py.
"""
import json
import os
import sys

import pytest
import torch

from ._cli import PY, REPO, TINY, TORCHRUN, make_data, run, weights
from tests._tools import load_tool

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not os.path.exists(TORCHRUN),
                                reason="torch.distributed / torchrun not available")
SCRIPT = str(REPO / "tests" / "reliability" / "ddp_tiny.py")


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    data = make_data(tmp_path / "data", num_images=16, seed=3, image_size=(64, 64))
    one = run([PY, SCRIPT, str(data), str(tmp_path / "r1"), str(tmp_path / "o1"), "--batch-size", "2", "--iters", "6"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run([TORCHRUN, "--standalone", "--nproc_per_node=2", SCRIPT, str(data), str(tmp_path / "r2"),
               str(tmp_path / "o2"), "--batch-size", "1", "--iters", "6"])
    assert two.returncode == 0, two.stderr[-3000:]

    solo = json.loads((tmp_path / "o1" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "o2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert solo["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
    # sharding: step t of the 2-process run = the two images of step t of the 1-process run, split
    for t in range(6):
        pair = solo["seen"][2 * t : 2 * t + 2]
        assert [ranks[0]["seen"][t], ranks[1]["seen"][t]] == pair
    # the logged loss is the mean over ranks = the 1-process batch mean
    for t in range(6):
        mean = (ranks[0]["losses"][t] + ranks[1]["losses"][t]) / 2
        assert abs(mean - solo["losses"][t]) < 1e-5
    # gradient averaging: the same weights after 6 steps, up to float rounding of the all-reduce
    a, b = weights(tmp_path / "r1" / "last.pt"), weights(tmp_path / "r2" / "last.pt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    # ... and training did move them (the comparison is not vacuous): the same init as the script
    sys.path.insert(0, str(REPO / "tests" / "engine"))
    from tiny_detector import TinyDetector

    classes = torch.load(tmp_path / "r1" / "last.pt", weights_only=True)["class_names"]
    torch.manual_seed(0)
    init = TinyDetector(num_classes=len(classes), dropout=0.0).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3
    # one writer: one checkpoint, one TensorBoard event file
    files = _files(tmp_path / "r2")
    assert files.count("last.pt") == 1 and len([f for f in files if f.startswith("tb/events")]) == 1, files
    assert len(files) == 2, files


def test_faster_rcnn_under_torchrun_writes_one_set_of_outputs(tmp_path):
    data = make_data(tmp_path / "data", num_images=8, seed=1)
    run_dir = tmp_path / "run"
    r = run([TORCHRUN, "--standalone", "--nproc_per_node=2", "tools/train.py", f"run_dir={run_dir}",
             f"data.root={data}", *TINY, "solver.batch_size=1", "solver.max_iters=2", "checkpoint_every=1",
             "tensorboard=true", "resume=true", "amp=auto"])
    assert r.returncode == 0, r.stderr[-4000:]
    files = _files(run_dir)
    assert files.count("last.pt") == 1 and [f for f in files if f.startswith(".hydra/")] == [
        ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"], files
    assert len([f for f in files if f.startswith("tb/events")]) == 1, files
    assert not [f for f in files if f.endswith(".tmp")], files
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    # every rank logs "resume requested but ... starting from scratch"; only rank 0's reaches train.log
    log = (run_dir / "train.log").read_text()
    assert log.count("starting from scratch") == 1, log
    # amp=auto: rank 0 decides (timing bf16 where the CPU has it) and both ranks train in its choice
    assert log.count("amp=auto -> ") == 1, log
    chosen = "bf16" if "amp=auto -> bf16" in log else "none"
    assert ckpt["amp"] == chosen


def test_nonzero_ranks_do_not_write_hydra_files(monkeypatch):
    mod = load_tool("train")
    monkeypatch.setenv("RANK", "0")
    assert mod.rank_zero_outputs(["a=1"]) == ["a=1"]
    monkeypatch.setenv("RANK", "1")
    assert mod.rank_zero_outputs(["a=1"]) == ["a=1", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
