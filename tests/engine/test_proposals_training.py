"""Fast R-CNN through the Trainer and predict on a proposals dict (the datasets carry the proposals)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detkit.data.batch import ImageBatch
from detkit.data.dataset import DetectionDataset
from detkit.data.synthetic import make_synthetic_voc
from detkit.data.transforms import build_transforms
from detkit.data.voc import load_voc
from detkit.engine.evaluator import predict, to_original_coords
from detkit.engine.run import train_from_config
from detkit.engine.trainer import Trainer
from detkit.methods.fast_rcnn import fast_rcnn
from tests.methods.test_fast_rcnn import tiny_backbone


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_synthetic_voc(tmp_path_factory.mktemp("voc"), num_images=4, image_size=(64, 96),
                              object_size=(20, 40), splits={"train": 1.0})
    return load_voc(root, "train")


def _proposals(data, seed=0):
    """Per image: each ground-truth box jittered 8 times plus 16 random boxes (original pixels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in data.records:
        jitter = np.repeat(r.boxes, 8, axis=0) + rng.normal(0, 3, (8 * len(r.boxes), 4))
        xy = rng.uniform(0, [r.width - 20, r.height - 20], (16, 2))
        rand = np.concatenate([xy, xy + rng.uniform(8, 20, (16, 2))], axis=1)
        boxes = np.concatenate([jitter, rand]).astype(np.float32)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        out[r.image_id] = np.clip(boxes, 0, [r.width, r.height] * 2)
    return out


def _model(data):
    torch.manual_seed(0)
    return fast_rcnn(backbone=tiny_backbone(), num_classes=len(data.class_names), batch_size_per_image=16)


def test_trainer_feeds_the_datasets_proposals(data, tmp_path):
    model = _model(data)
    seen = []

    def spy(module, args, kwargs):  # the proposals the model got must be the targets' own tensors
        targets, props = args[1], kwargs.get("proposals")
        seen.append(props is not None and all(p is t["proposals"] for p, t in zip(props, targets)))

    model.register_forward_pre_hook(spy, with_kwargs=True)
    before = [p.detach().clone() for p in model.roi_head.parameters()]
    train = DetectionDataset(data, build_transforms(train=True, min_size=64, max_size=128, color_jitter=None),
                             proposals=_proposals(data))
    trainer = Trainer(model=model, train_dataset=train, run_dir=tmp_path / "run", max_iters=3, batch_size=2,
                      lr=0.01, device="cpu", progress=False, tensorboard=False)
    trainer.fit()
    assert seen == [True] * 3
    assert len(trainer.history) == 3
    assert all(np.isfinite(h["roi_cls"]) and np.isfinite(h["roi_box"]) for h in trainer.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.roi_head.parameters()))  # it learnt


def test_predict_uses_the_proposals(data):
    model = _model(data).eval()
    tf = build_transforms(train=False, min_size=64, max_size=128)
    props = _proposals(data, seed=1)
    # batch_size=1: the same zero padding as the hand call below (padding shifts border features).
    dets = predict(model, DetectionDataset(data, tf, proposals=props), device="cpu", batch_size=1, progress=False)
    # Independently: the model called by hand on the same image and the transformed proposals.
    ds = DetectionDataset(data, tf, proposals=props)
    for i, rec in enumerate(data.records):
        image, t = ds[i]
        with torch.no_grad():
            out = model(ImageBatch.from_images([image]), proposals=[t["proposals"]])[0]
        expected = to_original_coords(out["boxes"], t["size"], t["orig_size"]).numpy()
        got = dets[rec.image_id]
        assert len(got["boxes"]) > 0  # scores ~1/(K+1) pass the 0.05 threshold: a real comparison
        order_e, order_g = np.argsort(-out["scores"].numpy(), kind="stable"), np.argsort(-got["scores"], kind="stable")
        np.testing.assert_allclose(got["scores"][order_g], out["scores"].numpy()[order_e], atol=1e-5)
        np.testing.assert_allclose(got["boxes"][order_g], expected[order_e], atol=1e-3)
    # No proposals for any image: nothing to classify, so no detections (the proposer is off).
    empty = predict(model, DetectionDataset(data, tf, proposals={}), device="cpu", batch_size=2, progress=False)
    assert all(len(d["boxes"]) == 0 for d in empty.values())


def test_fast_rcnn_without_proposals_config_names_both_options(tmp_path):
    conf = {"method": {"name": "fast_rcnn", "requires_proposals": True}, "data": {"name": "x"},
            "solver": {}, "device": "cpu", "run_dir": str(tmp_path)}
    with pytest.raises(ValueError, match=r"(?s)fast_rcnn.*selective_search.*file"):
        train_from_config(conf)


def test_builtin_proposer_searches_each_unpadded_image(data):
    from detkit.proposals.selective_search import selective_search

    torch.manual_seed(0)
    model = fast_rcnn(backbone=tiny_backbone(), num_classes=len(data.class_names), proposer="selective_search",
                      proposer_mode="single", proposer_min_size=4).eval()
    tf = build_transforms(train=False, min_size=64, max_size=128)
    ds = DetectionDataset(data, tf)
    images = [ds[0][0], ds[1][0]]
    batch = ImageBatch.from_images(images)  # padded: the search must see each image's own pixels only
    expected = [torch.from_numpy(selective_search(im.permute(1, 2, 0).numpy(), mode="single", min_size=4))
                for im in images]
    got = model.propose(batch)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    with torch.no_grad():
        auto, given = model(batch), model(batch, proposals=expected)
    for a, g in zip(auto, given):
        assert torch.equal(a["boxes"], g["boxes"]) and torch.equal(a["scores"], g["scores"])
    model.proposer = None
    with pytest.raises(ValueError, match="proposer='selective_search'"):
        model(batch)
