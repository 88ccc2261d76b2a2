"""Check that an install has what detkit needs: ``python -m detkit.utils.env_check``.

Two traps are checked: OpenCV's plain and contrib wheels write the same ``cv2/``
folder, so selective search (``cv2.ximgproc``) disappears when the plain one is installed last;
and a torchvision whose C++ ops do not match the installed torch fails at the first ``nms``.
"""
from __future__ import annotations

import sys


def check() -> list[str]:
    """Return a list of problems (empty when the environment is usable)."""
    problems: list[str] = []
    try:
        import detkit  # noqa: F401
    except Exception as e:  # pragma: no cover - reported, not raised
        problems.append(f"import detkit failed: {e!r}")
    try:
        import cv2

        cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    except Exception as e:
        problems.append(
            f"cv2.ximgproc.segmentation is unavailable ({e!r}). Another OpenCV wheel overwrote the "
            "contrib build: run `pip install --force-reinstall --no-deps "
            "opencv-contrib-python-headless==<installed version>`."
        )
    try:
        import torch
        import torchvision.ops

        keep = torchvision.ops.nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
        if keep.tolist() != [0]:
            problems.append(f"torchvision.ops.nms gave {keep.tolist()}, expected [0]")
    except Exception as e:
        problems.append(
            f"torchvision's C++ ops do not work ({e!r}): torch and torchvision versions do not match."
        )
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(f"env_check: {p}", file=sys.stderr)
    if not problems:
        print("env_check: detkit, cv2.ximgproc and torchvision.ops all work")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
