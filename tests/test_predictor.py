"""detkit.load / Predictor: one call, the same detections as tools/infer.py and the evaluator, all five methods."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import detkit
from detkit.data.dataset import DetectionDataset
from detkit.data.transforms import eval_transforms
from detkit.data.voc import load_voc
from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state
from detkit.engine.config import compose_run_config
from detkit.engine.evaluator import predict
from detkit.predictor import PredictorInputError
from tests._tools import load_tool

METHODS = ["faster_rcnn", "fast_rcnn", "rcnn", "sppnet", "overfeat"]
# Every method answers something from untrained weights: thresholds at the bottom.
LOW = {"faster_rcnn": ["method.model.box_score_thresh=0.0"], "fast_rcnn": ["method.model.score_thresh=0.0"],
       "rcnn": ["method.model.scorer=softmax", "method.model.score_thresh=0.0"],
       "sppnet": ["method.model.scorer=softmax", "method.model.score_thresh=0.0"],
       "overfeat": ["method.model.score_thresh=0.0", "method.model.merge=nms"]}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from detkit.data.synthetic import make_synthetic_voc
    root = make_synthetic_voc(tmp_path_factory.mktemp("voc") / "syn", num_images=6, image_size=(64, 96),
                              object_size=(16, 40), seed=0)
    return load_voc([root], "test"), root


@pytest.fixture(scope="module", params=METHODS)
def checkpoint(request, tmp_path_factory):
    method = request.param
    conf = compose_run_config([f"method={method}", "backbone=alexnet", "backbone.width=0.125", "backbone.norm=bn",
                               "data.transforms.min_size=64", "data.transforms.max_size=96",
                               *(["method.model.anchor_sizes=[16,32,64]"] if method == "faster_rcnn" else []),
                               *(["method.model.scales=[1.0]"] if method == "overfeat" else []),
                               *(["method.model.scales=[64]"] if method == "sppnet" else []),
                               "data.proposals.base_k=300", "data.proposals.inc_k=300", "data.proposals.max_side=96",
                               *LOW[method]])
    torch.manual_seed(0)
    model = build_model(conf, 4).eval()
    path = tmp_path_factory.mktemp(method) / "last.pt"
    atomic_torch_save(make_state(model=model, iteration=0, config=conf,
                                 class_names=["circle", "cross", "square", "triangle"]), path)
    return method, path


def _proposals(data, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for r in data.records:
        xy = rng.uniform(0, [r.width - 20, r.height - 20], (12, 2))
        out[r.image_id] = np.concatenate([xy, xy + rng.uniform(8, 20, (12, 2))], 1).astype(np.float32)
    return out


def test_load_equals_the_evaluator(checkpoint, voc):
    """Same checkpoint, same images: the Predictor's boxes (original pixels) and scores are the
    evaluator's (detections.json's) to 1e-4. Proposal methods get the same given boxes."""
    method, path = checkpoint
    data, _ = voc
    predictor = detkit.load(path, device="cpu")
    needs = method in ("fast_rcnn", "rcnn", "sppnet")
    props = _proposals(data) if needs else None
    ds = DetectionDataset(data, eval_transforms(predictor.config["data"]["transforms"]), proposals=props)
    expected = predict(predictor.model, ds, device="cpu", batch_size=1, progress=False)
    for r in data.records:
        got = predictor(r.file_name, proposals=props[r.image_id] if needs else None)
        exp = expected[r.image_id]
        assert len(got) == len(exp["scores"]) > 0
        np.testing.assert_allclose(got.boxes, exp["boxes"], atol=1e-4)
        np.testing.assert_allclose(got.scores, exp["scores"], atol=1e-6)
        np.testing.assert_array_equal(got.labels, exp["labels"])


def test_load_equals_infer(checkpoint, voc, tmp_path):
    method, path = checkpoint
    data, _ = voc
    files = [r.file_name for r in data.records[:2]]
    assert load_tool("infer").main(["--checkpoint", str(path), *files, "--out", str(tmp_path / "o"), "--device",
                                    "cpu", "--score-threshold", "0.0", "--batch-size", "1"]) == 0
    entries = json.loads((tmp_path / "o" / "detections.json").read_text())
    predictor = detkit.load(path, device="cpu", batch_size=1)
    for i, dets in enumerate(predictor(files)):
        mine = sorted(dets.to_coco(i), key=lambda e: -e["score"])
        theirs = [e for e in entries if e["image_id"] == i][: len(mine)]
        assert len(theirs) == min(len(mine), 100)
        for a, b in zip(mine, theirs):
            assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(b["score"], abs=1e-6)
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-4)


def test_every_input_kind_gives_the_same_answer(voc):
    data, _ = voc
    conf = compose_run_config(["backbone=alexnet", "backbone.width=0.125", "data.transforms.min_size=64",
                               "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
                               "method.model.box_score_thresh=0.0"])
    torch.manual_seed(0)
    predictor = detkit.Predictor(build_model(conf, 4), conf, ["a", "b", "c", "d"], device="cpu")
    path = data.records[0].file_name
    array = np.array(Image.open(path).convert("RGB"))
    ref = predictor(path)
    for x in (Image.open(path), array, torch.from_numpy(array).permute(2, 0, 1).contiguous()):
        d = predictor(x)
        np.testing.assert_allclose(d.boxes, ref.boxes, atol=1e-5)
    both = predictor([path, array])
    assert isinstance(both, list) and len(both) == 2
    high = predictor(path, score_threshold=float(np.median(ref.scores)))
    assert 0 < len(high) < len(ref) and (high.scores >= np.median(ref.scores)).all()
    h, w = array.shape[:2]
    assert (ref.boxes[:, 2] <= w).all() and (ref.boxes[:, 3] <= h).all()  # the file's own pixels
    assert ref.boxes[:, 2].max() > 0.8 * w  # not the resized image's
    assert ref.names == [ref.class_names[k] for k in ref.labels]
    assert ref.draw(array).shape == array.shape
    with pytest.raises(PredictorInputError, match=r"\(H, W, 3\) uint8"):
        predictor(array.astype(np.float32))


def test_build_any_method_and_dotted_overrides():
    model = detkit.build("faster_rcnn", "alexnet", num_classes=3, **{"backbone.width": 0.125,
                                                                     "method.model.roi_pool_mode": "align"})
    assert model.num_classes == 3 and model.roi_head.roi_pool.mode == "align"
    assert model.backbone.out_channels == 32
    for method in ("rcnn", "sppnet", "overfeat", "fast_rcnn"):
        assert detkit.build(method, "alexnet", num_classes=2, **{"backbone.width": 0.125}).num_classes == 2
    with pytest.raises(ValueError, match="backbone/resnet999"):
        detkit.build("faster_rcnn", "resnet999")


def test_load_fast_turns_on_the_recommended_options(tmp_path, voc):
    from detkit.engine.precision import resolve_amp

    conf = compose_run_config(["method=faster_rcnn", "backbone=alexnet", "backbone.width=0.125", "backbone.norm=bn",
                               "data.transforms.min_size=64", "data.transforms.max_size=96",
                               "method.model.anchor_sizes=[16,32,64]", *LOW["faster_rcnn"]])
    torch.manual_seed(0)
    path = tmp_path / "last.pt"
    atomic_torch_save(make_state(model=build_model(conf, 4).eval(), iteration=0, config=conf,
                                 class_names=["circle", "cross", "square", "triangle"]), path)
    plain, fast = detkit.load(path, device="cpu"), detkit.load(path, device="cpu", fast=True)
    assert fast.amp == resolve_amp("auto", torch.device("cpu")) and plain.amp == "none"
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert fast.model.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = np.asarray(Image.open(voc[0].records[0].file_name).convert("RGB"))
    a, b = plain(image), fast(image)
    assert len(a) > 0 and len(b) > 0
    assert not any(type(m) is torch.nn.Linear for m in fast.model.modules())  # int8 fc layers on the CPU
    if fast.amp == "none":  # channels_last and folding change nothing that matters; int8 fc layers a little
        np.testing.assert_allclose(a.scores[:5], b.scores[:5], atol=0.02)
