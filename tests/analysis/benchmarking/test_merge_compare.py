"""OverFeat merge comparison: hand-computed APs of each post-processing on hand-made candidates,
and the same mAP as a full test pass of the model with that setting."""
import pytest
import torch

from detkit.analysis.benchmarking.merge_compare import compare_merges, dense_candidates, format_rows, variant_name
from detkit.backbones.alexnet import alexnet
from detkit.data.dataset import DetectionDataset
from detkit.data.record import DetectionData, Record
from detkit.data.synthetic import make_synthetic_voc
from detkit.data.transforms import build_transforms
from detkit.data.voc import load_voc
from detkit.engine.evaluator import predict, score_detections
from detkit.methods.overfeat import overfeat


def _one_image_data():
    rec = Record(image_id=7, file_name="a.jpg", width=100, height=100, boxes=[[10.0, 10, 50, 50]], labels=[0])
    return DetectionData(records=[rec], class_names=["thing"], name="hand")


def test_vote_max_and_nms_by_hand():
    # Two boxes on the object (0.9, 0.8; IoU 0.90, match score 0.15) and a far false one (0.95).
    # greedy-sum: the object's cluster votes 1.7 > 0.95 -> true positive first, AP 1.
    # greedy-max (0.9) and NMS (keeps 0.9): the false 0.95 ranks first -> precision 1/2 at
    # recall 1, VOC07 11-point AP 0.5.
    boxes = torch.tensor([[10.0, 10, 50, 50], [12.0, 10, 52, 50], [60.0, 60, 95, 95]])
    cands = {7: (boxes, torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0, 0, 0]),
                 {"size": (100, 100), "orig_size": (100, 100)})}
    variants = [{"method": "greedy", "merge_threshold": 0.5, "confidence": "sum"},
                {"method": "greedy", "merge_threshold": 0.5, "confidence": "max"},
                {"method": "nms", "nms_thresh": 0.3}]
    rows = compare_merges(cands, _one_image_data(), variants)
    assert [r["name"] for r in rows] == ["greedy-sum@0.5", "greedy-max@0.5", "nms@0.3"]
    assert [r["voc07_mAP"] for r in rows] == pytest.approx([1.0, 0.5, 0.5])
    assert [r["detections_per_image"] for r in rows] == [2, 2, 2]
    assert rows[0]["voc07_ap"] == {"thing": pytest.approx(1.0)}
    table = format_rows(rows)
    assert "| greedy-sum@0.5 **(best)** | 1.000 |" in table and table.count("(best)") == 1


def test_variant_names():
    assert variant_name({"method": "nms", "nms_thresh": 0.5}) == "nms@0.5"
    assert variant_name({"method": "greedy", "merge_threshold": 0.3, "confidence": "max",
                         "weighting": "score"}) == "greedy-max@0.3-score"


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = make_synthetic_voc(tmp_path_factory.mktemp("merges"), num_images=6, image_size=(64, 96),
                              object_size=(24, 44), splits={"train": 0.5, "test": 0.5}, seed=3)
    return load_voc(root, "test")


def test_same_map_as_a_test_pass_with_that_setting(tiny_set):
    torch.manual_seed(0)
    model = overfeat(classifier=alexnet(width=0.125, num_classes=10, lrn=False), num_classes=len(tiny_set.class_names),
                     scales=(1.0, 0.6), reg_channels=(32, 16), score_thresh=0.0, pre_merge_top_n=50).eval()
    dataset = DetectionDataset(tiny_set, build_transforms(train=False, min_size=64, max_size=96))
    cands = dense_candidates(model, dataset, progress=False)
    assert set(cands) == {r.image_id for r in tiny_set.records}
    variants = [{"method": "nms", "nms_thresh": 0.3}, {"method": "greedy", "merge_threshold": 0.5, "confidence": "sum"},
                {"method": "greedy", "merge_threshold": 0.5, "confidence": "max"}]
    rows = compare_merges(cands, tiny_set, variants, max_detections=model.detections_per_img)
    for row, v in zip(rows, variants):
        model.merge = v["method"]
        model.nms_thresh = v.get("nms_thresh", model.nms_thresh)
        model.merge_confidence = v.get("confidence", model.merge_confidence)
        dets = predict(model, dataset, batch_size=1, progress=False)
        assert row["detections_per_image"] == sum(len(d["scores"]) for d in dets.values()) / len(dets) > 0
        assert row["voc07_mAP"] == pytest.approx(score_detections(dets, tiny_set, coco=False)["voc07"]["mAP"])


def test_only_overfeat_has_candidates():
    with pytest.raises(TypeError, match="not an OverFeat detector"):
        dense_candidates(torch.nn.Linear(2, 2), [], progress=False)
