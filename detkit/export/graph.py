"""The exportable detector: one image in, its detections in its own pixels out, as one graph.

:class:`ExportableDetector` wraps a trained Faster R-CNN (or Fast R-CNN, with the proposals as a
second input) so that pre-processing, the network and post-processing all run inside a traced
graph (ONNX or TorchScript), and any runtime can use it without detkit:

* input ``image``: uint8 RGB ``(3, H, W)`` of any size (and, for Fast R-CNN, ``proposals``
  ``(P, 4)`` float32 xyxy in that image's pixels);
* the run's test resize (the Fast R-CNN rule: shorter side ``min_size``, longer side at most
  ``max_size``, each side rounded), bilinear in float; padding to a multiple of 32 and
  normalisation, as ``Detector.preprocess``;
* the trunk, the RPN (anchors, top-k, NMS) and the RoI head (RoI pooling, region head, per-class
  NMS), the same modules and the same arithmetic as the eager detector, for a single image;
* outputs ``boxes`` ``(D, 4)`` float32 xyxy in the input image's pixels, ``scores`` ``(D,)``
  float32, ``labels`` ``(D,)`` int64 indices into the class names, best first.

The eager model's batched code keeps Python integers and caches (anchors per size, one host sync
for the output lists); tracing would freeze those to the example's size. This single-image path
reads every size from the traced tensors instead, so the exported graph stays dynamic in ``H, W``.
It is written here, once, rather than in the methods, because batching and tracing pull the
code in opposite directions; tests/export checks that the two give the same detections.

The only difference from ``detkit.load(...)``'s predictions is the resize: the predictor resizes
with OpenCV (fixed-point ``INTER_LINEAR``, rounded to uint8), the graph with bilinear
interpolation in float; pixel values differ by less than 1, which moves boxes by a fraction of a
pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from detkit.methods.fast_rcnn import FastRCNN
from detkit.methods.faster_rcnn import FasterRCNN
from detkit.ops.box_coder import clip_boxes


class ExportableDetector(nn.Module):
    """``image`` ``(3, H, W)`` uint8 [, ``proposals`` ``(P, 4)``] -> ``boxes, scores, labels`` (module docstring).

    Args:
        model: a trained :class:`FasterRCNN` or :class:`FastRCNN` (put in eval mode with the graph).
        min_size, max_size: the run's test resize (``data.transforms``; 600 / 1000 by default).
        size_divisible: pad the resized image to a multiple of this (the data loader's 32).
    """

    def __init__(self, model: nn.Module, *, min_size: int = 600, max_size: int = 1000,
                 size_divisible: int = 32) -> None:
        super().__init__()
        if not isinstance(model, (FasterRCNN, FastRCNN)):
            raise TypeError(f"ExportableDetector: only Faster R-CNN and Fast R-CNN export as one graph, got "
                            f"{type(model).__name__} (docs/deploy.md says how the other methods run)")
        self.model = model
        self.given_proposals = isinstance(model, FastRCNN)
        self.min_size = float(min_size)
        self.max_size = float(max_size)
        self.size_divisible = int(size_divisible)
        self.eval()

    def train(self, mode: bool = True) -> "ExportableDetector":
        """Always eval mode: the exporters restore the mode they found after tracing, and batch
        statistics in a BatchNorm trunk would otherwise change both the outputs and the weights."""
        return super().train(False)

    def forward(self, image: Tensor, proposals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        if self.given_proposals and proposals is None:
            raise ValueError("ExportableDetector: a Fast R-CNN graph takes proposals (P, 4) as its second input")
        hw = torch._shape_as_tensor(image)[1:].float()  # (2,) traced: the graph stays dynamic in H, W
        scale = torch.minimum(self.min_size / hw.min(), self.max_size / hw.max())
        new_hw = torch.round(hw * scale)  # the test transform rounds each side
        x = resize_bilinear(image, new_hw)
        ratio = (hw / new_hw).flip(0).repeat(2)  # (x, y, x, y) back to the input's pixels
        if proposals is not None:
            proposals = proposals.float().reshape(-1, 4) / ratio
        boxes, scores, labels = self.detect_resized(x, proposals)
        boxes = torch.minimum((boxes * ratio).clamp(min=0), hw.flip(0).repeat(2))
        return boxes, scores, labels

    def detect_resized(self, x: Tensor, proposals: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Detections on an already resized image: ``x`` ``(1, 3, h, w)`` float 0-255 (or uint8),
        ``proposals`` ``(P, 4)`` in its pixels -> boxes in its pixels, scores, labels."""
        model = self.model
        hw = torch._shape_as_tensor(x)[2:]  # (2,) int64, the true size
        d = self.size_divisible
        padded = torch.div(hw + (d - 1), d, rounding_mode="floor") * d
        x = (x.float() - model.pixel_mean) / model.pixel_std
        # Padding after normalising = the mean colour, as Detector.preprocess does.
        pad = padded - hw
        x = F.pad(x, [0, pad[1], 0, pad[0]])
        features = model.backbone(x)
        image_hw = hw[None]  # (1, 2)
        if proposals is None:
            proposals = self.rpn_proposals(features, image_hw)
        else:  # as the test transform moves given boxes: clipped, those under a pixel dropped
            proposals = clip_boxes(proposals[None], image_hw)[0]
            big = ((proposals[:, 2] - proposals[:, 0]) >= 1) & ((proposals[:, 3] - proposals[:, 1]) >= 1)
            proposals = proposals[big]
        return self.roi_detections(features, proposals, image_hw)

    def rpn_proposals(self, features: Tensor, image_hw: Tensor) -> Tensor:
        """The RPN's test-time proposals of one image: ``(P, 4)``, best first (``RegionProposalNetwork.propose``)."""
        rpn = self.model.rpn
        logits, deltas = rpn.head(features)  # (1, T), (1, T, 4)
        anchors = rpn.anchor_generator.grid(features.shape[-2], features.shape[-1], features.device)
        total = torch._shape_as_tensor(logits)[1]
        k = torch.clamp(total, max=rpn.pre_nms_top_n[False])  # traced: an image may have fewer anchors
        scores, idx = logits[0].float().topk(k)
        boxes = clip_boxes(rpn.box_coder.decode(deltas[0, idx], anchors[idx])[None], image_hw)[0]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= rpn.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= rpn.min_size)
        boxes, scores = boxes[keep], scores[keep]
        kept = nms(boxes, scores, rpn.nms_thresh)[: rpn.post_nms_top_n[False]]
        return boxes[kept]

    def roi_detections(self, features: Tensor, proposals: Tensor, image_hw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The RoI head on one image's ``(P, 4)`` proposals (``FastRCNNHead.detect`` and ``postprocess``)."""
        head = self.model.roi_head
        k = head.num_classes
        rois = torch.cat((torch.zeros_like(proposals[:, :1]), proposals), dim=1)  # (P, 5), image 0
        logits, deltas = head.predictor(head.box_head(head.roi_pool(features, rois)))
        probs = F.softmax(logits.float(), dim=-1)[:, 1:]  # (P, K)
        boxes = head.box_coder.decode(deltas.reshape(-1, k, 4), rois[:, None, 1:])
        boxes = clip_boxes(boxes[None], image_hw)[0]  # (P, K, 4)
        big = ((boxes[..., 2] - boxes[..., 0]) >= head.min_box_size) & (
            (boxes[..., 3] - boxes[..., 1]) >= head.min_box_size)
        keep = (probs > head.score_thresh) & big
        labels = torch.arange(k, device=probs.device).expand_as(probs)
        boxes, scores, labels = boxes[keep], probs[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels, head.nms_thresh)[: head.detections_per_img]
        return boxes[kept], scores[kept], labels[kept]


def resize_bilinear(image: Tensor, new_hw: Tensor) -> Tensor:
    """uint8 ``(3, H, W)`` -> float ``(1, 3, h, w)`` on the 0-255 scale, bilinear with half-pixel
    centres (as OpenCV's ``INTER_LINEAR``); ``new_hw`` ``(2,)`` float holding whole numbers.

    The scale factors are nudged by a quarter pixel so that ``floor(H * s) = h`` exactly, and
    ``recompute_scale_factor`` then samples at ``H / h`` like OpenCV does. The values are not
    rounded back to whole numbers: rounding would turn the runtimes' last-bit differences into
    whole grey levels at ``x.5`` and make the exported file disagree with PyTorch.
    """
    hw = torch._shape_as_tensor(image)[1:].float()
    factors = (new_hw + 0.25) / hw
    return F.interpolate(image[None].float(), scale_factor=(factors[0], factors[1]), mode="bilinear",
                         align_corners=False, recompute_scale_factor=True)
