"""tools/summary.py from the command line, and docs/backbones.md against its generator."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]


def test_cli_prints_alexnet_table(tmp_path):
    pytest.importorskip("detkit.backbones.alexnet")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "summary.py"), "backbone=alexnet", "input_size=227"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    conv1 = next(line for line in proc.stdout.splitlines() if line.startswith("features.0 "))
    assert "96×55×55" in conv1 and "34,944" in conv1  # 96 filters of 11×11×3 + 96 biases
    assert "parameters: " in proc.stdout and "multiply-adds: " in proc.stdout
    assert list(tmp_path.iterdir()) == []  # Hydra wrote no output folder or log


def _load(name: str):
    module = load_tool(name)
    return module


def test_options_reach_the_network():
    pytest.importorskip("detkit.backbones.alexnet")
    from hydra import compose, initialize_config_dir

    tool = _load("summary")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("summary", overrides=["backbone=alexnet", "part=backbone", "backbone.width=0.5",
                                            "depth=1", "input_size=[64,96]"])
    summary, text = tool.run(cfg)
    assert summary.part("trunk").output_shape == (128, 4, 6)  # 256·0.5 at ceil(64/16)×ceil(96/16)
    assert "== trunk ==" in text and "== region_head ==" in text and "128×4×6" in text
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        bad = compose("summary", overrides=["part=head"])
    with pytest.raises(ValueError, match="part must be one of"):
        tool.run(bad)


def test_docs_agree_with_generator():
    docs = REPO / "docs" / "backbones.md"
    if not docs.is_file():
        pytest.skip(f"{docs} not generated yet (python tools/make_backbone_docs.py)")
    pytest.importorskip("detkit.backbones.alexnet")
    tool = _load("make_backbone_docs")
    spec = next(s for s in tool.NETWORKS if s[0] == "alexnet")
    expected = tool.table_line(tool.row(*spec))
    assert expected in docs.read_text(encoding="utf-8").splitlines(), (
        "docs/backbones.md is stale: rerun python tools/make_backbone_docs.py")
