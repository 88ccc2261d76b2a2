"""docs/deploy.md's onnxruntime example, run as a user would paste it, on an exported model."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detkit
from detkit.engine.checkpoint import atomic_torch_save, build_model, make_state
from tests.export.test_export import CLASSES, decisive, tiny_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def test_the_onnx_example_runs_without_detkit(tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'detkit[export]'")
    example = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    assert "detkit" not in example and len(example.strip().splitlines()) <= 15
    torch.manual_seed(0)
    conf = tiny_config("faster_rcnn")
    model = decisive(build_model(conf, len(CLASSES)).eval())
    with torch.no_grad():  # confident enough that the example's 0.5 threshold prints something
        model.roi_head.predictor.cls_score.bias[1:] += 4.0
    atomic_torch_save(make_state(model=model, iteration=0, config=conf, class_names=CLASSES), tmp_path / "last.pt")
    predictor = detkit.load(tmp_path / "last.pt", device="cpu")
    predictor.export(tmp_path / "model.onnx", "onnx", verify=False)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    # A fresh interpreter with detkit hidden: the example needs only numpy, Pillow and onnxruntime.
    script = "import sys; sys.modules['detkit'] = None\n" + example
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines and all(line.split()[0] in CLASSES and " at (" in line for line in lines)
