"""Checkpoints: atomic replacement, clear errors for bad files, weights_only loading, RNG capture."""
import random

import numpy as np
import pytest
import torch
from torch import nn

from detkit.engine import checkpoint as ck
from detkit.engine.checkpoint import (CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint,
                                      load_model_weights, make_state, restore_rng_state)


def _state(model, it):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # momentum buffers exist now
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    return make_state(model=model, iteration=it, epoch=1, position=2, optimizer=opt, scheduler=sched,
                      scaler=torch.amp.GradScaler("cpu", enabled=False), config={"a": {"b": [1, 2]}},
                      class_names=["x", "y"], category_ids=[1, 2])


def test_roundtrip_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    path = CheckpointManager(tmp_path).save(_state(model, 7))
    assert path == tmp_path / "last.pt"
    # the real guarantee: torch's restricted unpickler accepts the file
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["iteration"] == 7 and raw["epoch"] == 1 and raw["position"] == 2
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"a": {"b": [1, 2]}} and ckpt["class_names"] == ["x", "y"]
    other = nn.Linear(3, 2)
    load_model_weights(other, ckpt["model"])
    assert torch.equal(other.weight, model.weight)
    assert "momentum_buffer" in ckpt["optimizer"]["state"][0]


def test_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    mgr = CheckpointManager(tmp_path)
    mgr.save(_state(model, 1))
    before = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes reach the temp file...
        raise KeyboardInterrupt("simulated kill during write")  # ...then the process dies

    monkeypatch.setattr(ck.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(_state(model, 2))
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_periodic_copies(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_every=2)
    model = nn.Linear(3, 2)
    for it in (1, 2, 3, 4):
        mgr.save(_state(model, it))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model_0000002.pt", "model_0000004.pt"]
    assert load_checkpoint(tmp_path / "model_0000002.pt")["iteration"] == 2


def test_corrupt_truncated_and_foreign_files(tmp_path):
    good = CheckpointManager(tmp_path).save(_state(nn.Linear(3, 2), 1))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt.*corrupt or truncated"):
        load_checkpoint(trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt: not a detkit checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "detkit-checkpoint", "model": {}, "iteration": 0, "obj": nn.Linear(1, 1)}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)  # weights_only refuses a pickled module


def test_weights_that_do_not_fit(tmp_path):
    sd = nn.Linear(3, 2).state_dict()
    with pytest.raises(CheckpointError, match=r"x.pt: .*shape mismatch: .*weight: checkpoint \(2, 3\) vs model \(4, 3\)"):
        load_model_weights(nn.Linear(3, 4), sd, source="x.pt")
    with pytest.raises(CheckpointError, match="missing in checkpoint: 0.bias"):
        load_model_weights(nn.Sequential(nn.Linear(3, 2)), {"0.weight": sd["weight"]})


def test_rng_state_roundtrip(tmp_path):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.randn(), torch.rand(3))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.randn(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_build_model_errors():
    with pytest.raises(CheckpointError, match="no 'method' section"):
        ck.build_model({"backbone": {}}, 3)
    cfg = {"backbone": {"_target_": "torch.nn.Identity"}, "method": {"model": {"_target_": "no.such.Detector"}}}
    with pytest.raises(CheckpointError, match="cannot build the model"):
        ck.build_model(cfg, 3)


def test_overrides_change_a_copy_of_the_stored_config():
    stored = {"method": {"name": "overfeat", "model": {"merge": "greedy", "scales": [1.0, 0.5]}}, "seed": 0}
    cfg = ck.apply_overrides(stored, ["method.model.merge=nms", "method.model.scales=[0.7]", "seed=3",
                                      "method.model.merge_confidence=max"])  # a keyword new since the run
    assert cfg["method"]["model"] == {"merge": "nms", "scales": [0.7], "merge_confidence": "max"}
    assert cfg["seed"] == 3
    assert stored["method"]["model"] == {"merge": "greedy", "scales": [1.0, 0.5]} and stored["seed"] == 0
    with pytest.raises(CheckpointError, match="no section 'method.modle'"):
        ck.apply_overrides(stored, ["method.modle.merge=nms"])
    with pytest.raises(CheckpointError, match="KEY=VALUE"):
        ck.apply_overrides(stored, ["method.model.merge"])
    with pytest.raises(CheckpointError, match="KEY=VALUE"):
        ck.apply_overrides(stored, ["method..merge=nms"])
    with pytest.raises(CheckpointError, match="cannot parse"):
        ck.apply_overrides(stored, ["seed=[1, 2"])
