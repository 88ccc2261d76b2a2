"""Eval-time packing of valid proposals (FastRCNNHead.detect) gives the detections of the old path,
which ran RoI pooling + region head + predictor on every (N, P) slot and masked padding after."""
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from detkit.ops.box_coder import clip_boxes
from tests.methods.test_fast_rcnn import synthetic_batch as fast_batch
from tests.methods.test_fast_rcnn import tiny_fast_rcnn
from detkit.methods.faster_rcnn import faster_rcnn
from tests.methods.test_faster_rcnn import synthetic_batch as faster_batch
from tests.methods.test_faster_rcnn import tiny_backbone, tiny_faster_rcnn


def reference_detect(head, features, proposals, valid, image_hw):
    """The pre-packing inference path, kept here as the reference: every slot through the head."""
    n, p = valid.shape
    k = head.num_classes
    logits, deltas = head.predictor(head.box_head(head.roi_pool(features, proposals)))
    probs = F.softmax(logits.float(), dim=-1).view(n, p, k + 1)[..., 1:]
    boxes = clip_boxes(head.box_coder.decode(deltas.view(n, p, k, 4), proposals[:, :, None, :]), image_hw)
    big = ((boxes[..., 2] - boxes[..., 0]) >= head.min_box_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= head.min_box_size)
    keep = (probs > head.score_thresh) & big & valid[..., None]
    labels = torch.arange(k).expand(n, p, k)
    image = torch.arange(n)[:, None, None].expand(n, p, k)
    boxes, scores, labels, image = boxes[keep], probs[keep], labels[keep], image[keep]
    kept = batched_nms(boxes, scores, image * k + labels, head.nms_thresh)
    out = []
    for i in range(n):
        idx = kept[image[kept] == i][: head.detections_per_img]
        out.append({"boxes": boxes[idx], "scores": scores[idx], "labels": labels[idx]})
    return out


def count_rois(head):
    """Forward hook on the predictor: how many regions went through the region head."""
    seen = []
    handle = head.predictor.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    return seen, handle


def assert_same(new, ref):
    assert len(new) == len(ref)
    for a, b in zip(new, ref):
        assert a["boxes"].shape == b["boxes"].shape and len(a["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
        assert torch.equal(a["labels"], b["labels"])


def test_faster_rcnn_eval_runs_head_on_valid_proposals_only():
    # 600 slots per image: more than image 0's 8 x 10 x 6 = 480 anchors, so some slots are padding.
    torch.manual_seed(0)
    model = faster_rcnn(backbone=tiny_backbone(), num_classes=2, anchor_sizes=(32, 64),
                        rpn_post_nms_top_n_test=600, box_score_thresh=0.0).eval()
    batch, _ = faster_batch()
    with torch.no_grad():
        images, hw = model.preprocess(batch)
        features = model.backbone(images)
        proposals, valid, _ = model.rpn(features, hw)
        ref = reference_detect(model.roi_head, features, proposals, valid, hw)
        seen, handle = count_rois(model.roi_head)
        new = model(batch)
        handle.remove()
    counts = valid.sum(1).tolist()
    assert 0 < counts[0] < 600 and 0 < counts[1] < 600 and counts[0] != counts[1], counts
    assert seen == [sum(counts)]  # one packed call, no padded slot
    assert_same(new, ref)


def test_fast_rcnn_eval_skips_padding_of_shorter_proposal_lists():
    model = tiny_fast_rcnn(score_thresh=0.0).eval()
    batch, _, proposals = fast_batch()
    proposals[1] = proposals[1][:7]  # padded to 80 slots in the batch
    with torch.no_grad():
        images, hw = model.preprocess(batch)
        props, valid = model.pad_proposals(proposals, hw)
        features = model.backbone(images)
        ref = reference_detect(model.roi_head, features, props, valid, hw)
        seen, handle = count_rois(model.roi_head)
        new = model(batch, proposals=proposals)
        handle.remove()
    assert valid.shape == (2, 80) and seen == [87]
    assert_same(new, ref)


def test_no_valid_proposals_gives_empty_detections_without_running_the_head():
    model = tiny_fast_rcnn(score_thresh=0.0).eval()
    batch, _, _ = fast_batch()
    seen, handle = count_rois(model.roi_head)
    with torch.no_grad():
        out = model(batch, proposals=[torch.zeros(0, 4), torch.zeros(0, 4)])
    handle.remove()
    assert seen == [] and len(out) == 2
    for det in out:
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["labels"].dtype == torch.int64


def test_training_keeps_fixed_slots():
    """Training still pools N x R sampled RoIs (fixed shapes, no sync): 2 images x 64."""
    model = tiny_faster_rcnn().train()
    batch, targets = faster_batch()
    seen, handle = count_rois(model.roi_head)
    model(batch, targets)
    handle.remove()
    assert seen == [2 * model.roi_head.batch_size_per_image]
