"""The wheel ships every config: each YAML file under detkit/configs matches a package-data pattern.

A file the patterns miss is absent from an installed detkit, and Hydra's ``optional`` defaults
(``preset/method@_global_``) would then drop it without a word.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_file_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["detkit.configs"]
    base = ROOT / "detkit" / "configs"
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*.yaml"))
    assert any("/" in f and f.count("/") == 2 for f in files)  # the nested preset/method files are seen
    # setuptools matches each pattern against the whole relative path; "*" does not cross "/".
    missed = [f for f in files if not any(fnmatch.fnmatch(f, p) and f.count("/") == p.count("/") for p in patterns)]
    assert missed == [], f"pyproject.toml's package-data for detkit.configs misses {missed}"
