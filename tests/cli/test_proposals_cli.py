"""tools/proposals.py end to end on a two-image synthetic set (subprocess, as a user runs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from detkit.data.synthetic import make_synthetic_voc
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]


def _cli_module():
    """tools/proposals.py imported in-process (a subprocess pays seconds of torch import)."""
    module = load_tool("proposals")
    return module


def _run(*args):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / "proposals.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_prints_table_and_reuses_cache(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", num_images=2, image_size=(64, 96), object_size=(20, 40),
                              splits={"test": 1.0})
    args = ["--voc-root", root, "--split", "test", "--mode", "single", "--cache-dir", tmp_path / "cache",
            "--workers", "2", "--counts", "1,5", "--no-progress"]
    proc = _run(*args, "--out", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "images 2" in proc.stdout and "recall@0.5" in proc.stdout and "MABO" in proc.stdout
    assert [ln.split()[0] for ln in lines if ln.strip().split()[0] in {"1", "5", "all"}] == ["1", "5", "all"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_images"] == 2 and result["mode"] == "single"
    assert len(list((tmp_path / "cache").glob("single-500-*/*.npz"))) == 2
    # recall can only grow with more proposals
    r = [row["recall"]["0.5"] for row in result["rows"]]
    assert r == sorted(r)

    cli = _cli_module()
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 0  # everything cached: same figures, nothing recomputed
    again = capsys.readouterr().out.splitlines()
    assert again[2:-1] == lines[2:-1]
    assert "wall" not in again[-1]  # no image was searched in this run


def test_cli_missing_root_exit_2(tmp_path, capsys):
    cli = _cli_module()
    assert cli.main(["--voc-root", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "VOC root folder not found" in err


# --- --proposer rpn: a tiny untrained Faster R-CNN saved the way the trainer saves checkpoints ---

def _config(method: str) -> dict:
    from omegaconf import OmegaConf

    conf = OmegaConf.create({
        "channels_last": False,
        "method": OmegaConf.load(REPO / "configs" / "method" / f"{method}.yaml"),
        "backbone": OmegaConf.load(REPO / "configs" / "backbone" / "alexnet.yaml"),
        "data": {"transforms": {"min_size": 128, "max_size": 256}},  # images 64 x 96 -> 128 x 192
    })
    conf.backbone.width = 0.125
    if method == "faster_rcnn":
        conf.method.model.anchor_sizes = [16, 32, 64]
    return OmegaConf.to_container(conf, resolve=True)


def _save_checkpoint(path, method: str, names) -> None:
    import torch

    from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state

    torch.manual_seed(0)
    conf = _config(method)
    model = build_model(conf, len(names))
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=list(names)), path)


def test_cli_rpn_reports_and_saves_proposals_fast_rcnn_can_read(tmp_path, capsys):
    import numpy as np
    import torch

    from detkit.data.batch import ImageBatch
    from detkit.data.images import read_image
    from detkit.data.transforms import build_transforms
    from detkit.data.voc import load_voc
    from detkit.engine.checkpoint import model_from_checkpoint
    from detkit.proposals.cache import read_proposals_file

    root = make_synthetic_voc(tmp_path / "voc", num_images=3, image_size=(64, 96), object_size=(20, 40),
                              splits={"test": 1.0})  # sides drawn from 64..96
    data = load_voc(root, "test")
    _save_checkpoint(tmp_path / "last.pt", "faster_rcnn", data.class_names)
    cli = _cli_module()
    code = cli.main(["--voc-root", str(root), "--split", "test", "--proposer", "rpn", "--checkpoint",
                     str(tmp_path / "last.pt"), "--device", "cpu", "--batch-size", "1", "--loader-workers", "0",
                     "--rpn-top-n", "40", "--counts", "1,10", "--save", str(tmp_path / "rpn.npz"),
                     "--out", str(tmp_path / "r.json"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "recall@0.5" in out.out and "MABO" in out.out and "trunk + rpn s/img" in out.out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["proposer"] == "rpn" and result["num_images"] == 3 and result["post_nms_top_n"] == 40
    assert [row["count"] for row in result["rows"]] == [1, 10, "all"]
    assert set(result["rows"][0]["recall"]) == {"0.5", "0.7"} and 0 <= result["rows"][-1]["mabo"] <= 1
    recalls = [row["recall"]["0.5"] for row in result["rows"]]
    assert recalls == sorted(recalls)

    saved = read_proposals_file(tmp_path / "rpn.npz", data)  # what data.proposals.file=rpn.npz reads
    assert sorted(saved) == sorted(r.image_id for r in data.records)
    assert 0 < result["mean_proposals"] <= 40
    model, _ = model_from_checkpoint(tmp_path / "last.pt")
    model.rpn.post_nms_top_n[False] = 40
    tf = build_transforms(train=False, min_size=128, max_size=256)
    for r in data.records:
        b = saved[r.image_id]
        assert b.ndim == 2 and b.shape[1] == 4 and 0 < len(b) <= 40
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= r.width).all() and (b[:, 3] <= r.height).all()
        # independently: this image alone through the test resize, its RPN boxes scaled back
        image = tf(read_image(r.file_name), np.zeros((0, 4), np.float32))["image"]
        scale = np.array([image.shape[1] / r.width, image.shape[0] / r.height] * 2, np.float32)
        assert scale.min() > 1.3  # shorter side to 128: the mapping back is not the identity
        with torch.no_grad():
            x, hw = model.preprocess(ImageBatch.from_images([torch.from_numpy(image).permute(2, 0, 1).contiguous()],
                                                            size_divisible=32))
            props, valid, _ = model.rpn(model.backbone(x), hw)
        np.testing.assert_allclose(b, np.clip(props[0][valid[0]].numpy() / scale, 0, [r.width, r.height] * 2),
                                   atol=1e-3)

    # batched (3 images in one padded batch): same file format, boxes still inside each image
    assert cli.main(["--voc-root", str(root), "--split", "test", "--proposer", "rpn", "--checkpoint",
                     str(tmp_path / "last.pt"), "--device", "cpu", "--batch-size", "3", "--loader-workers", "0",
                     "--rpn-top-n", "40", "--save", str(tmp_path / "rpn3.json"), "--no-progress"]) == 0
    for r in data.records:
        b = read_proposals_file(tmp_path / "rpn3.json", data)[r.image_id]
        assert 0 < len(b) <= 40 and (b[:, 2] <= r.width + 1e-4).all() and (b[:, 3] <= r.height + 1e-4).all()


def test_cli_rpn_refuses_a_model_without_rpn(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", num_images=1, image_size=(64, 96), object_size=(20, 40),
                              splits={"test": 1.0})
    from detkit.data.voc import load_voc

    _save_checkpoint(tmp_path / "fast.pt", "fast_rcnn", load_voc(root, "test").class_names)
    cli = _cli_module()
    assert cli.main(["--voc-root", str(root), "--proposer", "rpn", "--checkpoint", str(tmp_path / "fast.pt"),
                     "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fast.pt" in err and "'fast_rcnn' model has no region proposal network" in err
    assert "Faster R-CNN checkpoint" in err
