"""Shared test fixtures.

The real data sets live beside the checkout in ``../shared/data`` (never in the repository);
tests that need them are skipped with a clear reason where that folder does not exist, as on a
user's machine. ``DETKIT_SHARED_DATA`` points elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Property-based tests (hypothesis): a fixed, derandomised profile, so CI runs the same examples
# every time and stays within its budget; HYPOTHESIS_PROFILE=thorough searches longer by hand.
settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DETKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared_set(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "Annotations").is_dir():
        pytest.skip(f"real data set {name!r} not found at {root} (set DETKIT_SHARED_DATA to use it)")
    return root


@pytest.fixture
def bccd_root() -> Path:
    """``../shared/data/bccd``: 364 blood-cell images, 3 classes (skips if absent)."""
    return _shared_set("bccd")


@pytest.fixture
def raccoon_root() -> Path:
    """``../shared/data/raccoon``: 200 photos, 1 class, greyscale and odd sizes (skips if absent)."""
    return _shared_set("raccoon")
