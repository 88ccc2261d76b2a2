"""OverFeat detector: contract (losses / detections), learning, and tools/train.py end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detkit.backbones.alexnet import alexnet
from detkit.data.batch import ImageBatch
from detkit.methods.overfeat import OverFeat, overfeat

REPO = Path(__file__).resolve().parents[2]


def _tiny(**kw):
    torch.manual_seed(0)
    # LRN off: its CPU backward costs ten times the rest of this tiny net
    args = dict(classifier=alexnet(width=0.125, num_classes=10, lrn=False), num_classes=3, scales=(1.0, 0.5),
                batch_size_per_image=32, reg_channels=(32, 16))
    args.update(kw)
    return overfeat(**args)


def _batch():
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=g),
            torch.randint(0, 256, (3, 80, 72), dtype=torch.uint8, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5, 60, 70], [0, 0, 20, 20]]), "labels": torch.tensor([0, 2])}]
    return ImageBatch.from_images(imgs), targets


def test_builder_replaces_last_layer_and_keeps_fc6_weights():
    clf = alexnet(width=0.125, num_classes=10)
    model = overfeat(classifier=clf, num_classes=3, scales=(1.0,))
    assert isinstance(model, OverFeat)
    convs = [m for m in model.net.classifier.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[-1].out_channels == 4                     # K + 1, background at 0
    assert convs[0].weight.data_ptr() == clf.classifier[1].weight.data_ptr()  # fc6, shared
    assert model.regressor.deltas.out_channels == 12      # 4 per class


def test_train_mode_losses_and_sgd_reduces_them():
    model = _tiny(scales=(0.8,)).train()
    batch, targets = _batch()
    losses = model(batch, targets)
    assert set(losses) == {"overfeat_cls", "overfeat_box"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["overfeat_box"] > 0   # positives exist at this scale
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    torch.manual_seed(0)
    first = None
    for _ in range(8):
        total = sum(model(batch, targets).values())
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    torch.manual_seed(0)
    assert sum(model(batch, targets).values()).item() < first


def test_windows_are_labelled_by_overlap():
    model = _tiny(scales=(0.8,))
    batch, targets = _batch()
    images, hw = model.preprocess(batch)
    logits, deltas, windows, own = model.dense(images, hw, 0.8)
    n0 = model.net.input_size
    f = model.resize_factors(hw, 0.8)
    # every window has the side n0 / f in the image and the grid step (S / s) / f
    side = windows[..., 2] - windows[..., 0]
    for i in range(2):
        torch.testing.assert_close(side[i], torch.full_like(side[i], n0 / f[i]))
    assert logits.shape[:2] == windows.shape[:2] and deltas.shape[-1] == 12


def test_box_loss_is_averaged_over_the_positive_windows():
    # All positives sampled (positive_fraction 1): more background samples leave the per-positive
    # box loss unchanged and dilute the per-sample one (Fast R-CNN's normalisation).
    batch, targets = _batch()
    loss = {}
    for norm in ("positives", "samples"):
        for n in (32, 128):  # 22 and 29 positive windows in the two images
            model = _tiny(scales=(0.8,), box_loss_norm=norm, batch_size_per_image=n, positive_fraction=1.0).train()
            torch.manual_seed(0)  # the same dropout masks
            loss[norm, n] = model(batch, targets)["overfeat_box"].item()
    assert loss["positives", 32] > 0
    assert loss["positives", 32] == pytest.approx(loss["positives", 128], rel=1e-5)
    assert loss["samples", 128] < loss["samples", 32] < loss["positives", 32]


def test_an_images_windows_do_not_depend_on_its_batch():
    # An image batched with a wider one (each is resized by its own shorter side: 64x96 -> 355x532,
    # 64x300 -> 227x1064 at q = 1) sits in a wider tensor with more windows; its own windows (the
    # ones labelled in training and turned into detections) are those it has alone.
    model = _tiny().eval()
    g = torch.Generator().manual_seed(2)
    small = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=g)
    wide = torch.randint(0, 256, (3, 64, 300), dtype=torch.uint8, generator=g)
    for q in model.scales:
        images, hw = model.preprocess(ImageBatch.from_images([small]))
        _, _, win_alone, own_alone = model.dense(images, hw, q)
        images, hw = model.preprocess(ImageBatch.from_images([small, wide]))
        _, _, win_batch, own_batch = model.dense(images, hw, q)
        assert win_batch.shape[1] > win_alone.shape[1]
        assert own_batch[0].sum() == own_alone[0].sum() > 0
        torch.testing.assert_close(win_batch[0][own_batch[0]], win_alone[0][own_alone[0]])
        centre = (win_batch[0][own_batch[0]][:, :2] + win_batch[0][own_batch[0]][:, 2:]) / 2
        assert (centre[:, 0] < 96).all() and (centre[:, 1] < 64).all()


@pytest.mark.parametrize("merge", ["greedy", "nms"])
def test_eval_returns_boxes_inside_the_image(merge):
    model = _tiny(merge=merge, score_thresh=0.0).eval()
    batch, _ = _batch()
    out = model(batch)
    assert len(out) == 2
    for det, (h, w) in zip(out, batch.image_sizes):
        b = det["boxes"]
        assert b.shape[0] == det["scores"].shape[0] == det["labels"].shape[0] > 0
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert det["labels"].dtype == torch.int64 and det["labels"].min() >= 0 and det["labels"].max() <= 2
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="^OverFeat: "):
        _tiny(merge="soft")
    with pytest.raises(ValueError, match="^OverFeat: "):
        _tiny(scales=())
    with pytest.raises(ValueError, match="box_loss_norm"):
        _tiny(box_loss_norm="windows")
    with pytest.raises(ValueError, match="merge_confidence"):
        _tiny(merge_confidence="mean")
    model = _tiny().train()
    batch, _ = _batch()
    with pytest.raises(ValueError, match="targets"):
        model(batch)


def test_train_cli_runs_overfeat(tmp_path):
    args = ["tools/train.py", f"run_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'syn'}",
            "method=overfeat", "backbone=alexnet", "backbone.width=0.125", "backbone.lrn=false", "data.generate.num_images=6",
            "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]",
            "data.transforms.min_size=64", "data.transforms.max_size=96", "method.model.scales=[1.0,0.6]",
            "method.model.reg_channels=[32,16]", "method.model.batch_size_per_image=32",
            "solver.max_iters=2", "solver.warmup_iters=1", "solver.batch_size=2", "num_workers=0",
            "progress=false", "tensorboard=false", "test.batch_size=2"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HYDRA_FULL_ERROR": "0"}
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 2 and any(k.startswith("regressor.") for k in ckpt["model"])
    # tools/compare_merges.py on that checkpoint: every default variant, as JSON and a table
    out = tmp_path / "merges.json"
    r = subprocess.run([sys.executable, "tools/compare_merges.py", "--checkpoint", str(tmp_path / "run" / "last.pt"),
                        "--voc-root", str(tmp_path / "syn"), "--split", "test", "--device", "cpu", "--no-progress",
                        "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["name"] for row in rows][:3] == ["nms@0.3", "nms@0.5", "greedy-sum@0.3"] and len(rows) == 8
    assert all(0.0 <= row["voc07_mAP"] <= 1.0 for row in rows)
    assert "| post-processing | VOC07 mAP |" in r.stdout
    # a checkpoint that is not OverFeat's, and a missing one, are clear errors (exit 2)
    r = subprocess.run([sys.executable, "tools/compare_merges.py", "--checkpoint", str(tmp_path / "nope.pt"),
                        "--voc-root", str(tmp_path / "syn")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "nope.pt" in r.stderr
