"""compare_train: detkit's detector and torchvision's twin trained alike and scored alike (CPU, tiny)."""
from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.detection import FasterRCNN as TVFasterRCNN

from detkit.analysis.benchmarking import compare_train as ct
from detkit.analysis.benchmarking.torchvision_compare import build_training_twin, setting_differences, twin_settings
from detkit.data.batch import ImageBatch
from detkit.engine.checkpoint import build_model
from detkit.engine.config import compose_run_config
from tests._tools import load_tool

TINY = [
    "backbone=alexnet", "backbone.width=0.125", "backbone.norm=bn", "data.generate.num_images=8",
    "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]", "data.transforms.min_size=64",
    "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]", "solver.warmup_iters=0",
    "solver.lr=0.01", "solver.batch_size=2", "num_workers=0", "progress=false", "tensorboard=false",
    "test.batch_size=2", "test.coco=false", "device=cpu", "solver.max_iters=3",
]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    overrides = [f"data.root={tmp / 'syn'}", *TINY]
    sides = [ct.Side("detkit"), ct.Side("align", ("method.model.roi_pool_mode=align",)),
             ct.Side(ct.TORCHVISION, ct.TWIN_OVERRIDES, twin=True)]
    result = ct.compare_train(overrides, budget_s=30, seeds=[0, 1], work=tmp / "work", sides=sides, echo=lambda s: None)
    return tmp, overrides, sides, result


def test_every_side_and_seed_is_trained_and_scored(compared):
    tmp, _, _, result = compared
    assert [(r["side"], r["seed"]) for r in result["runs"]] == [
        ("detkit", 0), ("align", 0), ("torchvision", 0), ("detkit", 1), ("align", 1), ("torchvision", 1)]
    for r in result["runs"]:
        assert r["iterations"] == 3 and 0.0 <= r["voc07"] <= 1.0 and r["test_ms_per_image"] > 0
        m = json.loads((tmp / "work" / f"{r['side']}-seed{r['seed']}" / "metrics.json").read_text())
        assert m["voc07"]["mAP"] == r["voc07"]
    s = result["summary"]["torchvision"]
    assert s["voc07_mean"] == pytest.approx(sum(s["voc07"]) / 2) and s["voc07_sd"] is not None
    # the twin's checkpoint holds torchvision's modules, trained under the same loop
    ckpt = torch.load(tmp / "work" / "torchvision-seed0" / "last.pt", weights_only=True)
    assert any(k.startswith("model.rpn.head.") for k in ckpt["model"]) and ckpt["config"]["amp"] == "none"
    json.dumps(result)  # JSON-ready


def test_finished_runs_are_read_not_trained_again(compared, monkeypatch):
    tmp, overrides, sides, result = compared
    monkeypatch.setattr("detkit.engine.run.train_from_config", lambda *a, **k: pytest.fail("trained again"))
    again = ct.compare_train(overrides, budget_s=30, seeds=[0, 1], work=tmp / "work", sides=sides, echo=lambda s: None)
    assert [r["voc07"] for r in again["runs"]] == [r["voc07"] for r in result["runs"]]


def test_table_lists_sides_and_what_differs(compared):
    text = ct.to_markdown(compared[3])
    assert text.startswith("synthetic, up to 30 s of training per run, seeds 0, 1; every run: `data.root=")
    assert "solver.max_iters=3`" in text.splitlines()[0]  # the shared overrides, which may end runs early
    assert "| detkit |" in text and "| align (`method.model.roi_pool_mode=align`) |" in text
    assert "| RoI background IoU band | [0.1, 0.5) | [0, 0.5) |" in text


def test_twin_is_torchvision_around_the_same_network():
    conf = compose_run_config(["backbone=alexnet", "backbone.width=0.125", "method.model.anchor_sizes=[16,32,64]"])
    torch.manual_seed(0)
    model = build_model(conf, 3)
    twin = build_training_twin(model)
    assert isinstance(twin.model, TVFasterRCNN)
    trunk = dict(twin.model.backbone.body.named_parameters())
    for name, p in model.backbone.trunk.named_parameters():
        assert torch.equal(trunk[name], p)  # the same initial weights
    assert twin.model.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)  # torchvision's, not detkit's
    assert twin.model.roi_heads.fg_bg_sampler.batch_size_per_image == 128
    batch = ImageBatch.from_images([torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)] * 2)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 50.0]]), "labels": torch.tensor([2])}] * 2
    losses = twin.train()(batch, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    twin.model.roi_heads.score_thresh = 0.0
    out = twin.eval()(batch)
    assert len(out) == 2 and (out[0]["labels"] < 3).all() and (out[0]["labels"] >= 0).all()
    assert (out[0]["boxes"][:, 2] <= 96).all() and (out[0]["boxes"][:, 3] <= 64).all()  # not resized


def test_settings_and_their_differences():
    conf = compose_run_config(["backbone=alexnet", "backbone.width=0.125"])
    model = build_model(conf, 2)
    s = twin_settings({"box_nms_thresh": 0.3})
    assert s["box_nms_thresh"] == 0.3 and s["rpn_post_nms_top_n_test"] == 1000
    rows = {d["setting"]: d for d in setting_differences(model, {"box_nms_thresh": 0.3})}
    assert "test NMS IoU" not in rows and rows["RoI features"]["torchvision"].startswith("RoI Align")
    with pytest.raises(ValueError, match="unknown setting 'box_nms'"):
        twin_settings({"box_nms": 0.3})


def test_cli_errors_are_one_line(tmp_path, capsys):
    main = load_tool("compare_train").main
    assert main(["--budget", "0", "--work", str(tmp_path)]) == 2
    assert "budget_s must be positive" in capsys.readouterr().err
    assert main(["--budget", "5", "--work", str(tmp_path), "--variant", "novalue"]) == 2
    assert "expected NAME=OVERRIDES" in capsys.readouterr().err
    assert main(["method=rcnn", "--budget", "5", "--work", str(tmp_path), "--no-detkit"]) == 2
    assert "twin is a Faster R-CNN" in capsys.readouterr().err
