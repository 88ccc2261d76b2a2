"""Test scaffolding: the smallest real model that follows detkit's detector contract.

A 2-layer CNN + global max pool predicts one box (relative coordinates, sigmoid) and one
class per image. Training loss: smooth-L1 between the predicted box and the image's first
ground-truth box (both divided by the image size) + cross-entropy on its label; images without
objects contribute nothing. Dropout makes the forward pass use the global torch RNG, so exact
resume is only possible when RNG states are checkpointed. Eval: one detection per image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyDetector(nn.Module):
    def __init__(self, *, num_classes: int, backbone=None, width: int = 16, dropout: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        )
        self.box = nn.Linear(width, 4)
        self.cls = nn.Linear(width, num_classes)

    def forward(self, batch, targets=None):
        x = batch.tensor.float() / 255.0
        f = self.features(x)
        rel = torch.sigmoid(self.box(f))  # (N, 4) xyxy / (w, h, w, h)
        logits = self.cls(f)
        hw = torch.as_tensor(batch.image_sizes, dtype=torch.float32, device=x.device)  # (N, 2)
        scale = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], dim=1)
        if self.training:
            has = [len(t["boxes"]) > 0 for t in targets]
            if not any(has):
                return {"loss_box": rel.sum() * 0.0, "loss_cls": logits.sum() * 0.0}
            idx = torch.tensor([i for i, h in enumerate(has) if h], device=x.device)
            gt = torch.stack([t["boxes"][0] for t in targets if len(t["boxes"])]) / scale[idx]
            labels = torch.stack([t["labels"][0] for t in targets if len(t["boxes"])])
            return {"loss_box": F.smooth_l1_loss(rel[idx], gt, beta=0.1),
                    "loss_cls": F.cross_entropy(logits[idx], labels)}
        prob = logits.softmax(-1)
        score, label = prob.max(-1)
        boxes = rel * scale
        return [{"boxes": boxes[i : i + 1], "scores": score[i : i + 1], "labels": label[i : i + 1]}
                for i in range(len(batch.image_sizes))]
