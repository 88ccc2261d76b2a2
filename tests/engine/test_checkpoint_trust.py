"""A checkpoint's stored config cannot make detkit import or call anything but its own builders.

Every entry point that rebuilds a model from a checkpoint (``model_from_checkpoint``, tools/infer.py,
tools/compare_merges.py, tools/proposals.py --proposer rpn) refuses a checkpoint whose config names
foreign code, before anything is imported: the marker file the foreign code would create or empty
is untouched. Every checkpoint detkit writes still loads.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from detkit.engine.checkpoint import (CHECKPOINT_BUILDERS, CheckpointError, atomic_torch_save, build_model,
                                      check_stored_config, load_checkpoint, make_state, model_from_checkpoint)
from detkit.engine.config import CONFIG_DIR, compose_run_config
from tests._tools import load_tool

MARKER_TEXT = "precious\n"


def _config(method: str = "faster_rcnn") -> dict:
    conf = compose_run_config([f"method={method}", "backbone=alexnet", "backbone.width=0.125",
                               "data.transforms.min_size=64", "data.transforms.max_size=96"])
    return conf


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    conf = _config()
    torch.manual_seed(0)
    model = build_model(conf, 2)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=["a", "b"]), path)
    return path


def _tampered(good: Path, tmp_path: Path, edit) -> tuple[Path, Path, Path]:
    """A copy of ``good`` whose config ``edit(config, marker, created)`` changed; returns the
    checkpoint and two marker paths: one that exists (must keep its text), one that must not appear."""
    marker = tmp_path / "marker.txt"
    marker.write_text(MARKER_TEXT)
    created = tmp_path / "created.txt"
    ckpt = load_checkpoint(good)
    ckpt["config"] = copy.deepcopy(ckpt["config"])
    edit(ckpt["config"], str(marker), str(created))
    path = tmp_path / "evil.pt"
    atomic_torch_save(ckpt, path)
    return path, marker, created


def _open_for_writing(cfg, marker, created):  # empties any file the user can write
    cfg["backbone"] = {"_target_": "builtins.open", "file": marker, "mode": "w"}


def _print_into_file(cfg, marker, created):  # writes text to any path (a .pth file: code at next start)
    cfg["backbone"] = {"_target_": "builtins.print", "_args_": ["import os"],
                       "file": {"_target_": "builtins.open", "file": created, "mode": "w"}}


def _os_system(cfg, marker, created):
    cfg["method"]["model"]["_target_"] = "os.system"
    cfg["method"]["model"]["command"] = f"echo pwned > {created}"


def _deep_inside_method_model(cfg, marker, created):
    cfg["method"]["model"]["anchor_sizes"] = [32, {"_target_": "builtins.open", "file": marker, "mode": "w"}]


def _interpolation(cfg, marker, created):
    cfg["method"]["model"]["rpn_nms_thresh"] = "${oc.env:HOME}"


ATTACKS = [_open_for_writing, _print_into_file, _os_system, _deep_inside_method_model, _interpolation]


def _untouched(marker: Path, created: Path) -> None:
    assert marker.read_text() == MARKER_TEXT
    assert not created.exists()


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__.strip("_"))
def test_model_from_checkpoint_refuses_foreign_code(good_checkpoint, tmp_path, attack):
    path, marker, created = _tampered(good_checkpoint, tmp_path, attack)
    with pytest.raises(CheckpointError, match="refusing to build the model") as err:
        model_from_checkpoint(path)
    assert str(path) in str(err.value)
    _untouched(marker, created)


def test_overrides_cannot_smuggle_code_either(good_checkpoint, tmp_path):
    marker = tmp_path / "marker.txt"
    marker.write_text(MARKER_TEXT)
    with pytest.raises(CheckpointError, match="refusing"):
        model_from_checkpoint(good_checkpoint, ["method.model._target_=builtins.print"])
    assert marker.read_text() == MARKER_TEXT


def test_the_message_names_the_key_and_the_target(good_checkpoint, tmp_path):
    path, *_ = _tampered(good_checkpoint, tmp_path, _deep_inside_method_model)
    with pytest.raises(CheckpointError) as err:
        model_from_checkpoint(path)
    assert "method.model.anchor_sizes[1]._target_" in str(err.value) and "builtins.open" in str(err.value)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__.strip("_"))
def test_infer_refuses_with_exit_code_2(good_checkpoint, tmp_path, attack, capsys):
    from PIL import Image
    path, marker, created = _tampered(good_checkpoint, tmp_path, attack)
    image = tmp_path / "im.png"
    Image.new("RGB", (96, 64)).save(image)
    assert load_tool("infer").main(["--checkpoint", str(path), str(image), "--out", str(tmp_path / "o"),
                                    "--device", "cpu"]) == 2
    assert "refusing to build the model" in capsys.readouterr().err
    _untouched(marker, created)


def test_compare_merges_and_rpn_proposals_refuse(good_checkpoint, tmp_path, capsys):
    from detkit.data.synthetic import make_synthetic_voc
    root = make_synthetic_voc(tmp_path / "voc", num_images=4, seed=0)
    path, marker, created = _tampered(good_checkpoint, tmp_path, _print_into_file)
    assert load_tool("compare_merges").main(["--checkpoint", str(path), "--voc-root", str(root),
                                            "--device", "cpu", "--no-progress"]) == 2
    assert "refusing to build the model" in capsys.readouterr().err
    assert load_tool("proposals").main(["--proposer", "rpn", "--checkpoint", str(path), "--voc-root", str(root),
                                       "--device", "cpu", "--no-progress", "--loader-workers", "0"]) == 2
    assert "refusing to build the model" in capsys.readouterr().err
    _untouched(marker, created)


@pytest.mark.parametrize("method", ["faster_rcnn", "fast_rcnn", "rcnn", "sppnet", "overfeat"])
def test_every_method_detkit_writes_still_loads(tmp_path, method):
    conf = _config(method)
    torch.manual_seed(0)
    model = build_model(conf, 2)
    path = tmp_path / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=["a", "b"]), path)
    loaded, _ = model_from_checkpoint(path)
    assert type(loaded) is type(model)


def test_initial_weights_file_of_the_run_is_not_needed(good_checkpoint, tmp_path):
    """A run started from ImageNet weights on another machine: the file is gone, the checkpoint loads."""
    ckpt = load_checkpoint(good_checkpoint)
    ckpt["config"]["backbone"]["weights"] = str(tmp_path / "gone" / "imagenet.pth")
    path = tmp_path / "moved.pt"
    atomic_torch_save(ckpt, path)
    model_from_checkpoint(path)


def test_builder_list_matches_the_configs():
    """Every _target_ in configs/ is allowed, and every allowed builder is one configs/ uses."""
    targets = set()

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "_target_":
                    targets.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for f in CONFIG_DIR.rglob("*.yaml"):
        walk(yaml.safe_load(f.read_text()))
    assert targets == set(CHECKPOINT_BUILDERS)


def test_check_passes_plain_configs_and_refuses_hydra_keys():
    check_stored_config(_config())
    with pytest.raises(CheckpointError, match="_partial_"):
        check_stored_config({"method": {"model": {"_target_": "detkit.methods.faster_rcnn.faster_rcnn",
                                                  "_partial_": True}}})
