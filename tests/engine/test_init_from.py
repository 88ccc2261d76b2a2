"""init_from: a new run starts from another run's weights; the class-specific layers start afresh on
other classes. All five methods, and through a real (tiny) training run."""
from __future__ import annotations

import pytest
import torch

from detkit.engine.checkpoint import CheckpointError, atomic_torch_save, build_model, init_weights_from, make_state
from detkit.engine.config import compose_run_config

METHODS = ["faster_rcnn", "fast_rcnn", "rcnn", "sppnet", "overfeat"]


def _conf(method, *extra):
    return compose_run_config([f"method={method}", "backbone=alexnet", "backbone.width=0.125", *extra])


def _saved(tmp_path, method, names, seed=0):
    torch.manual_seed(seed)
    model = build_model(_conf(method), len(names))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained": different from any fresh initialisation
    path = tmp_path / f"{method}.pt"
    atomic_torch_save(make_state(model=model, iteration=5, config=_conf(method), class_names=names), path)
    return model, path


@pytest.mark.parametrize("method", METHODS)
def test_other_classes_get_a_fresh_predictor_and_the_rest_loads(tmp_path, method):
    old, path = _saved(tmp_path, method, ["a", "b"])
    torch.manual_seed(1)
    new = build_model(_conf(method), 3)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    report = init_weights_from(new, path, ["a", "b", "c"])
    assert report["reinitialised"] and report["loaded"]
    specific = tuple(new.class_specific())
    for key, value in new.state_dict().items():
        if key.startswith(specific) or key in specific:
            assert torch.equal(value, fresh[key]), key  # left as initialised
        elif key in report["loaded"]:
            assert torch.equal(value, old.state_dict()[key]), key
    trunk = [k for k in report["loaded"] if "trunk" in k or k.startswith("net.pre")]
    assert trunk, "the shared convolutions came from the checkpoint"


def test_same_classes_load_everything(tmp_path):
    old, path = _saved(tmp_path, "faster_rcnn", ["a", "b"])
    new = build_model(_conf("faster_rcnn"), 2)
    report = init_weights_from(new, path, ["a", "b"])
    assert not report["reinitialised"] and not report["shape_differs"]
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in new.state_dict().items())


def test_a_checkpoint_of_nothing_alike_is_a_clear_error(tmp_path):
    _, path = _saved(tmp_path, "faster_rcnn", ["a", "b"])
    other = build_model(_conf("overfeat"), 2)  # no key in common
    with pytest.raises(CheckpointError, match="no weight of this checkpoint fits the model"):
        init_weights_from(other, path, ["a", "b"])


def test_a_training_run_starts_from_it(tmp_path, caplog):
    from detkit.engine.run import train_from_config
    _, path = _saved(tmp_path, "faster_rcnn", ["x", "y"])
    conf = _conf("faster_rcnn", f"data.root={tmp_path / 'syn'}", "data.generate.num_images=6",
                 "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]",
                 "data.transforms.min_size=64", "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
                 "solver.max_iters=1", "solver.warmup_iters=0", "solver.lr=1e-12", "solver.weight_decay=0.0", "solver.batch_size=2", "num_workers=0",
                 "progress=false", "tensorboard=false", "test.enabled=false", f"run_dir={tmp_path / 'run'}",
                 f"init_from={path}", "device=cpu")
    with caplog.at_level("INFO", logger="detkit.train"):
        train_from_config(conf)
    assert "init_from" in caplog.text and "re-initialised (other classes): roi_head.predictor." in caplog.text
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    start = torch.load(path, weights_only=True)["model"]
    key = "backbone.trunk.0.weight"
    torch.testing.assert_close(trained[key], start[key])  # one step at lr 1e-12: the checkpoint's trunk
