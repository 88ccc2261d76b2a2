"""Faster R-CNN's 4-step alternating training (method.training=alternating) on a tiny generated set (CPU)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from detkit.engine import alternating
from detkit.engine.checkpoint import load_checkpoint, model_from_checkpoint
from detkit.engine.run import train_from_config
from detkit.methods.faster_rcnn import FasterRCNN
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]
# As tests/cli/test_train_cli.py's TINY, with batch norm in the trunk: its running statistics
# must stay put while the trunk is fixed (steps 3 and 4), which only eval mode guarantees.
TINY = [
    "backbone=alexnet", "backbone_name=alexnet", "backbone.width=0.125", "backbone.norm=bn",
    "data.generate.num_images=8", "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]",
    "data.transforms.min_size=64", "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
    "solver.max_iters=3", "solver.warmup_iters=0", "solver.lr=0.01", "solver.batch_size=2", "num_workers=0",
    "checkpoint_every=2", "progress=false", "tensorboard=false", "test.batch_size=2", "test.coco=false",
    "method.training=alternating", "method.alternating.proposals_per_image=40",
    "method.alternating.step_2.max_iters=4",
]


def make_conf(tmp: Path, run: str, *extra: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("train", overrides=[f"run_dir={tmp / run}", f"data.root={tmp / 'syn'}", *TINY, *extra])
    return OmegaConf.to_container(cfg, resolve=True)


def _sd(run_dir: Path, name: str) -> dict:
    return load_checkpoint(run_dir / name)["model"]


def _same(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alt")
    conf = make_conf(tmp, "run")
    summary = train_from_config(conf)  # through run.py's branch
    return tmp, conf, summary


def test_four_steps_run_and_write_checkpoints(trained):
    tmp, conf, summary = trained
    run = tmp / "run"
    from detkit.data.voc import load_voc
    from detkit.proposals.cache import read_proposals_file

    data = load_voc([tmp / "syn"], "trainval")
    for k, iters in ((1, 3), (2, 4), (3, 3), (4, 3)):
        rec = summary["alternating"][f"step_{k}"]
        assert rec["iteration"] == iters and load_checkpoint(run / f"step_{k}" / "last.pt")["iteration"] == iters
        assert (run / f"step_{k}.pt").is_file() and np.isfinite(rec["last_loss"])
    assert [summary["alternating"][f"step_{k}"]["trained"] for k in range(1, 5)] == \
        ["rpn+trunk", "roi_head+trunk", "rpn", "roi_head"]
    for k in (1, 3):  # the RPN's proposals over every train image, at most proposals_per_image
        props = read_proposals_file(run / f"step_{k}" / "proposals_train.npz", data)
        assert set(props) == {r.image_id for r in data.records}
        assert all(0 < len(b) <= 40 for b in props.values())
        assert all((b[:, 2] <= r.width + 1e-3).all() and (b[:, 3] <= r.height + 1e-3).all()
                   for r in data.records for b in [props[r.image_id]])  # original-image pixels
    m = json.loads((run / "metrics.json").read_text())
    steps = [summary["alternating"][f"step_{k}"] for k in range(1, 5)]
    assert m["training"] == "alternating" and m["iteration"] == 13 and m["stopped_by"] == "max_iters"
    assert m["train_seconds"] == pytest.approx(sum(s["train_seconds"] + s.get("proposal_seconds", 0) for s in steps))
    assert m["train_images_per_second"] == pytest.approx(13 * 2 / sum(s["train_seconds"] for s in steps))
    assert 0 <= m["voc07"]["mAP"] <= 1 and 0 < m["test_model_seconds_per_image"] <= m["test_seconds_per_image"]
    assert (run / "detections.json").is_file()


def test_fixed_trunk_in_steps_3_and_4(trained):
    run = trained[0] / "run"
    s1, s2, s3, s4 = (_sd(run, f"step_{k}.pt") for k in range(1, 5))
    assert any("running_mean" in k for k in s2 if k.startswith("backbone.trunk."))  # BN buffers are compared too
    assert not _same(s1, s2, "backbone.trunk.")  # step 2 trains its own trunk
    # step 3: trunk (weights and BN statistics) bit-identical, the RPN head changed, the detector untouched
    assert _same(s2, s3, "backbone.trunk.") and not _same(s2, s3, "rpn.head.") and _same(s2, s3, "roi_head.")
    # step 4: trunk and RPN bit-identical, region head and predictor changed
    assert _same(s3, s4, "backbone.trunk.") and _same(s3, s4, "rpn.")
    assert not _same(s3, s4, "backbone.region_head.") and not _same(s3, s4, "roi_head.predictor.")


def test_final_model_is_a_plain_faster_rcnn_with_step2_trunk(trained, tmp_path):
    tmp, _, _ = trained
    run = tmp / "run"
    final, s2, s4 = _sd(run, "last.pt"), _sd(run, "step_2.pt"), _sd(run, "step_4.pt")
    assert _same(final, s2, "backbone.trunk.") and _same(final, s4, "")
    model, _ = model_from_checkpoint(run / "last.pt")
    assert type(model) is FasterRCNN
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((tmp / "syn" / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(p, images / p.name)
    infer = load_tool("infer")
    assert infer.main(["--checkpoint", str(run / "last.pt"), str(images), "--out", str(tmp_path / "out"),
                       "--device", "cpu", "--score-threshold", "0.0", "--batch-size", "2"]) == 0
    assert isinstance(json.loads((tmp_path / "out" / "detections.json").read_text()), list)


def test_rerun_skips_finished_steps(trained, monkeypatch):
    tmp, conf, _ = trained
    run = tmp / "run"
    before = {k: (run / f"step_{k}.pt").stat().st_mtime_ns for k in range(1, 5)}
    monkeypatch.setattr(alternating, "run_step", lambda *a, **k: pytest.fail("a finished step ran again"))
    monkeypatch.setattr(alternating, "rpn_proposals", lambda *a, **k: pytest.fail("proposals computed again"))
    summary = train_from_config({**conf, "resume": True, "test": {**conf["test"], "enabled": False}})
    assert {k: (run / f"step_{k}.pt").stat().st_mtime_ns for k in range(1, 5)} == before
    assert summary["alternating"]["step_4"]["iteration"] == 3


def test_killed_run_resumes_at_the_step_it_was_in(trained, monkeypatch):
    tmp, _, _ = trained
    conf = make_conf(tmp, "killed", "test.enabled=false", "method.alternating.step_2.max_iters=2",
                     "solver.max_iters=1")
    run, real = tmp / "killed", alternating.run_step

    def killed_at_3(k, *a, **kw):
        if k == 3:
            raise KeyboardInterrupt
        return real(k, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(alternating, "run_step", killed_at_3)
        with pytest.raises(KeyboardInterrupt):
            train_from_config(conf)
    assert (run / "step_2.pt").is_file() and not (run / "step_3.pt").exists()
    t = {k: (run / f"step_{k}.pt").stat().st_mtime_ns for k in (1, 2)}
    ran = []

    def only_new(k, *a, **kw):
        assert k >= 3, f"step {k} ran again"
        ran.append(k)
        return real(k, *a, **kw)

    monkeypatch.setattr(alternating, "run_step", only_new)
    train_from_config({**conf, "resume": True})
    assert ran == [3, 4] and {k: (run / f"step_{k}.pt").stat().st_mtime_ns for k in (1, 2)} == t
    assert _same(_sd(run, "step_2.pt"), _sd(run, "last.pt"), "backbone.trunk.")


def test_step_solver_overrides_and_bad_key():
    conf = {"solver": {"max_iters": 100, "lr": 0.001, "milestones": [80]},
            "method": {"alternating": {"step_3": {"max_iters": 7, "lr": None, "milestones": [5]}}}}
    assert alternating.step_solver(conf, 3) == {"max_iters": 7, "lr": 0.001, "milestones": [5]}
    assert alternating.step_solver(conf, 1) == conf["solver"]
    conf["method"]["alternating"]["step_2"] = {"iters": 5}
    with pytest.raises(ValueError, match=r"step_2.*iters"):
        alternating.step_solver(conf, 2)
    with pytest.raises(ValueError, match="method.recipe must be one of joint, stages, alternating, got 'alternate'"):
        train_from_config({"method": {"name": "faster_rcnn", "training": "alternate", "recipe": "alternate"}})


def test_alternating_refuses_torchrun(monkeypatch):
    from detkit.engine.alternating import train_alternating

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="runs in one process"):
        train_alternating({"method": {"name": "faster_rcnn", "training": "alternating"}, "data": {},
                           "run_dir": "unused"})


def test_changed_step_setting_recomputes_that_step_and_later(trained, monkeypatch, caplog):
    """A finished run resumed with step 3's learning rate changed: steps 1-2 reused, 3-4 trained again."""
    tmp, conf, _ = trained
    shutil.copytree(tmp / "run", tmp / "changed")
    conf = {**conf, "run_dir": str(tmp / "changed"), "resume": True, "resume_changed_config": True,
            "test": {**conf["test"], "enabled": False}}
    conf["method"] = {**conf["method"], "alternating": {**conf["method"]["alternating"],
                                                       "step_3": {"max_iters": None, "lr": 0.5, "milestones": None}}}
    ran, real = [], alternating.run_step
    monkeypatch.setattr(alternating, "run_step", lambda k, *a, **kw: ran.append(k) or real(k, *a, **kw))
    with caplog.at_level("INFO", logger="detkit.alternating"):
        train_from_config(conf)
    assert ran == [3, 4]
    assert "method.alternating.step_3.lr" in caplog.text


def test_the_method_config_names_the_recipe():
    """The recipe comes from the method config (method.recipe); Faster R-CNN's follows method.training."""
    from detkit.engine.config import compose_run_config
    assert compose_run_config(["method=faster_rcnn"])["method"]["recipe"] == "joint"
    assert compose_run_config(["method=faster_rcnn", "method.training=alternating"])["method"]["recipe"] == "alternating"
    assert {compose_run_config([f"method={m}"])["method"]["recipe"] for m in ("rcnn", "sppnet")} == {"stages"}
    assert {compose_run_config([f"method={m}"])["method"]["recipe"] for m in ("fast_rcnn", "overfeat")} == {"joint"}
