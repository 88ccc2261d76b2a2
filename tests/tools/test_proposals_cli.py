"""tools/proposals.py end to end on a two-image synthetic set (subprocess, as a user runs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from detkit.data.synthetic import make_synthetic_voc
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]


def _cli_module():
    """tools/proposals.py imported in-process (a subprocess pays seconds of torch import)."""
    module = load_tool("proposals")
    return module


def _run(*args):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, str(REPO / "tools" / "proposals.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_prints_table_and_reuses_cache(tmp_path, capsys):
    root = make_synthetic_voc(tmp_path / "voc", num_images=2, image_size=(64, 96), object_size=(20, 40),
                              splits={"test": 1.0})
    args = ["--voc-root", root, "--split", "test", "--mode", "single", "--cache-dir", tmp_path / "cache",
            "--workers", "2", "--counts", "1,5", "--no-progress"]
    proc = _run(*args, "--out", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "images 2" in proc.stdout and "recall@0.5" in proc.stdout and "MABO" in proc.stdout
    assert [ln.split()[0] for ln in lines if ln.strip().split()[0] in {"1", "5", "all"}] == ["1", "5", "all"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_images"] == 2 and result["mode"] == "single"
    assert len(list((tmp_path / "cache").glob("*-single-500/*.npz"))) == 2
    # recall can only grow with more proposals
    r = [row["recall"]["0.5"] for row in result["rows"]]
    assert r == sorted(r)

    cli = _cli_module()
    capsys.readouterr()
    assert cli.main([str(a) for a in args]) == 0  # everything cached: same figures, nothing recomputed
    again = capsys.readouterr().out.splitlines()
    assert again[2:-1] == lines[2:-1]
    assert "wall" not in again[-1]  # no image was searched in this run


def test_cli_missing_root_exit_2(tmp_path, capsys):
    cli = _cli_module()
    assert cli.main(["--voc-root", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "VOC root folder not found" in err
