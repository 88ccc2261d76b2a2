"""R-CNN in eval mode on given proposals (CPU, width-0.125 AlexNet, tiny images)."""
import pytest
import torch
from torchvision.ops import box_iou

from detkit.backbones.alexnet import alexnet_backbone
from detkit.data.batch import ImageBatch
from detkit.methods.rcnn import RCNN


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = RCNN(backbone=alexnet_backbone(width=0.125), num_classes=2, score_thresh=-1.0).eval()
    images = [torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), torch.randint(0, 256, (3, 80, 64), dtype=torch.uint8)]
    batch = ImageBatch.from_images(images)
    props = [torch.tensor([[0, 0, 30, 30], [2, 1, 33, 29], [40, 10, 90, 60], [10, 20, 50, 63.]]),
             torch.tensor([[5, 5, 40, 70], [0, 0, 64, 80.], [20, 30, 60, 75]])]
    return model, batch, props


def test_detections_are_valid(setup):
    model, batch, props = setup
    with torch.no_grad():
        model.svm_weight.normal_(0, 0.1)
        model.svm_bias.fill_(0.5)
        out = model(batch, proposals=props)
    assert len(out) == 2
    for det, (h, w) in zip(out, batch.image_sizes):
        b, s, lab = det["boxes"], det["scores"], det["labels"]
        assert b.shape == (len(s), 4) and lab.dtype == torch.int64 and len(s) > 0
        assert ((lab >= 0) & (lab < 2)).all() and (s >= -1.0).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all() and (b[:, 2] > b[:, 0]).all()
        assert (s[:-1] >= s[1:]).all()  # ranked
        for c in range(2):  # per-class NMS 0.3
            bc = b[lab == c]
            iou = box_iou(bc, bc) - torch.eye(len(bc))
            assert (iou <= 0.3 + 1e-6).all()


def test_warp_uses_network_input_size(setup):
    model, batch, props = setup
    model.regions_per_batch(torch.device("cpu"))  # the one-region memory probe, before counting passes
    seen = []
    trunk = model.backbone.trunk
    hook = trunk.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            model(batch, proposals=props)
    finally:
        hook.remove()
    assert model.backbone.input_size == 227
    assert seen == [(4, 3, 227, 227), (3, 3, 227, 227)]  # one batched warp per image, all proposals


def test_svm_scores_rank_the_detections(setup):
    model, batch, props = setup
    with torch.no_grad():
        # Class 0's SVM is always below the threshold, class 1's score is feature j: class 1 wins.
        j = 3
        model.svm_weight.zero_()
        model.svm_weight[1, j] = 1.0
        model.svm_bias.copy_(torch.tensor([-5.0, 0.0]))
        model.svm_scale.fill_(1.0)
        out = model(batch, proposals=props)
        images, hw = model.preprocess(batch)
        fc, _ = model.region_features(images[:1], hw[:1], [props[0]])
    det = out[0]
    assert (det["labels"] == 1).all()
    expected = fc[:, j][fc[:, j] >= -1.0]
    assert torch.isclose(det["scores"][0], expected.max())  # the top detection is the top SVM score
    assert all(torch.isclose(s, expected).any() for s in det["scores"])
