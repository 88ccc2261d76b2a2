"""The install traps detkit.utils.env_check guards against (docs/install.md), checked on the installed environment."""
from __future__ import annotations

import sys
import types

import torch

from detkit.utils import env_check


def test_selective_search_is_importable():
    # Fails when opencv-python(-headless) was installed after the contrib wheel.
    import cv2

    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    img = (torch.rand(32, 40, 3) * 255).to(torch.uint8).numpy()
    ss.setBaseImage(img)
    ss.switchToSelectiveSearchFast()
    boxes = ss.process()  # (n, 4) x, y, w, h
    assert len(boxes) > 0
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 40).all()


def test_torchvision_cpp_ops_work():
    import torchvision.ops

    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_env_check_passes_here():
    assert env_check.check() == []


def test_env_check_reports_opencv_without_contrib(monkeypatch):
    # A cv2 module without ximgproc is what the plain wheel leaves behind.
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    problems = env_check.check()
    assert len(problems) == 1 and "opencv-contrib-python-headless" in problems[0]
