"""The predict core: images in, detections in the images' own pixels out.

One path from a picture to its boxes, shared by ``detkit.Predictor`` (``detkit.load``),
``tools/infer.py`` and, through :func:`detection_entry`, the evaluator:

1. :func:`test_input`: resize an ``(H, W, 3)`` uint8 RGB image with the run's test transform
   (``detkit.data.transforms.eval_transforms``: the Fast R-CNN rule at the largest training
   scale) -> ``(3, H', W')`` uint8 tensor;
2. :func:`detect`: pad into an ``ImageBatch``, run the detector (eval mode, no gradients, the
   run's autocast), and map every box back to its image's original pixels
   (:func:`detkit.engine.evaluator.detection_entry`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.engine.evaluator import detection_entry
from detkit.engine.precision import autocast_context


def test_input(image: np.ndarray, transform, boxes: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(H, W, 3)`` uint8 RGB -> the ``(3, H', W')`` uint8 tensor the detector sees, and ``boxes``
    (``(P, 4)`` in the image's pixels, e.g. given proposals) through the same transform, as
    ``DetectionDataset`` moves a data set's proposals (those it drops, below one pixel, are gone)."""
    given = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    out = transform(image, given)
    tensor = torch.from_numpy(np.require(out["image"], requirements=["C", "W"])).permute(2, 0, 1).contiguous()
    return tensor, (None if boxes is None else torch.from_numpy(np.asarray(out["boxes"], np.float32).reshape(-1, 4)))


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[np.ndarray], transform, *, device: torch.device | str = "cpu",
           amp: str = "none", channels_last: bool = False,
           proposals: Sequence[np.ndarray] | None = None) -> list[dict[str, np.ndarray]]:
    """Detections of each ``(H, W, 3)`` uint8 RGB image, in that image's pixels.

    Args:
        model: a detector in eval mode (the detector contract: ``model(ImageBatch)`` -> one
            ``{"boxes", "scores", "labels"}`` per image, in the batch's pixels).
        images: one batch of images (any sizes).
        transform: the run's test transform (``eval_transforms``).
        proposals: given boxes (R-CNN, SPPNet, Fast R-CNN), one ``(P_i, 4)`` xyxy array per image in
            that image's pixels; ``None`` lets the model propose (or search) itself.

    Returns:
        one ``{"boxes": (D, 4) float32 xyxy, "scores": (D,) float32, "labels": (D,) int64}`` per
        image, sorted as the model returned them (by score).
    """
    from detkit.data.batch import ImageBatch

    device = torch.device(device)
    if proposals is not None and len(proposals) != len(images):
        raise ValueError(f"detect: {len(proposals)} proposal arrays for {len(images)} images")
    pairs = [test_input(im, transform, None if proposals is None else proposals[i]) for i, im in enumerate(images)]
    inputs = [t for t, _ in pairs]
    batch = ImageBatch.from_images(inputs).to(device)
    if channels_last:
        batch.tensor = batch.tensor.contiguous(memory_format=torch.channels_last)
    kwargs: dict[str, Any] = {}
    if proposals is not None:
        kwargs["proposals"] = [p.to(device) for _, p in pairs]
    with autocast_context(device, amp):
        outputs = model(batch, **kwargs)
    return [detection_entry(out, {"size": tuple(t.shape[1:]), "orig_size": im.shape[:2]})
            for out, t, im in zip(outputs, inputs, images)]


@torch.no_grad()
def rpn_proposals(model: nn.Module, data, transform, *, device: torch.device | str = "cpu",
                  top_n: int | None = None, pre_nms_top_n: int | None = None, batch_size: int = 2,
                  num_workers: int = 0, amp: str = "none", progress: bool = True,
                  timing: dict[str, float] | None = None) -> dict[int, np.ndarray]:
    """A Faster R-CNN's RPN proposals (trunk + RPN only) for every image of ``data`` (``DetectionData``).

    Each image is resized by ``transform`` (the run's test transform); the RPN keeps
    ``pre_nms_top_n`` boxes by objectness, NMS, then ``top_n`` (``None``: the model's test-time
    settings). Used by 4-step alternating training (Fast R-CNN trains on these) and by
    ``detkit proposals --proposer rpn`` (their recall).

    Returns:
        ``{image_id: (P, 4) float32}`` xyxy in ORIGINAL-image pixels, best first. With ``timing``,
        ``seconds`` (trunk + RPN, GPU-synchronised) and ``images`` are added to it.
    """
    import functools
    import time

    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from detkit.data.dataset import DetectionDataset, collate_detections
    from detkit.engine.evaluator import to_original_coords

    device = torch.device(device)
    rpn, was_training = model.rpn, model.training
    saved = (rpn.pre_nms_top_n[False], rpn.post_nms_top_n[False])
    if pre_nms_top_n is not None:
        rpn.pre_nms_top_n[False] = int(pre_nms_top_n)
    if top_n is not None:
        rpn.post_nms_top_n[False] = int(top_n)
    loader = DataLoader(DetectionDataset(data, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, generator=torch.Generator(),
                        collate_fn=functools.partial(collate_detections, size_divisible=32))  # as the evaluator
    out: dict[int, np.ndarray] = {}
    seconds = 0.0
    model.eval().to(device)
    try:
        for batch, targets in tqdm(loader, desc="rpn proposals", unit="batch", disable=not progress, leave=False):
            start = time.perf_counter()
            with autocast_context(device, amp):
                images, image_hw = model.preprocess(batch.to(device))
                props, valid, _ = rpn(model.backbone(images), image_hw)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            for i, t in enumerate(targets):
                b = to_original_coords(props[i][valid[i]].float(), t["size"], t["orig_size"])
                out[int(t["image_id"])] = b.cpu().numpy().astype(np.float32).reshape(-1, 4)
    finally:
        rpn.pre_nms_top_n[False], rpn.post_nms_top_n[False] = saved
        model.train(was_training)
    if timing is not None:
        timing["seconds"] = timing.get("seconds", 0.0) + seconds
        timing["images"] = timing.get("images", 0) + len(out)
    return out
