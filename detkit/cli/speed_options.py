"""The test-time speed options ``detkit infer`` and ``detkit benchmark`` share: ``--fast``,
``--svd``, ``--int8`` and ``--int8-trunk`` (detkit.compression; docs/performance.md measures each)."""
from __future__ import annotations

import argparse


def add_speed_options(p: argparse.ArgumentParser, *, benchmark: bool = False) -> None:
    """Add ``--fast``, ``--svd RANK...``, ``--int8`` and ``--int8-trunk N`` to ``p`` (``benchmark``:
    detkit's side only)."""
    who = "detkit only; torchvision's twin is timed as built. " if benchmark else ""
    p.add_argument("--fast", action="store_true",
                   help=f"{who}bf16 autocast where it is faster (a bf16 GPU; a CPU with AVX512-BF16 / AMX where a start-up "
                        "timing finds bf16 faster), "
                        "channels_last, batch norm folded into the convolutions and, on the CPU, int8 fc layers (not R-CNN's)"
                        + (" (the last two with --mode infer)" if benchmark else " (detkit.load(fast=True))"))
    p.add_argument("--svd", type=int, nargs="+", default=None, metavar="RANK",
                   help=f"{who}truncated SVD of the region head's fc layers (fc6 fc7), e.g. --svd 1024 256 "
                        "(Fast R-CNN paper, VGG-16): faster, slightly less accurate")
    p.add_argument("--int8", action="store_true",
                   help=f"{who}int8 dynamic quantisation of the fc layers (region head, box predictor); CPU only; "
                        "part of --fast on the CPU")
    calibration = ("N random images of the input size (the timing does not depend on them)" if benchmark
                   else "the first N input images")
    p.add_argument("--int8-trunk", type=int, default=None, metavar="N",
                   help=f"{who}int8 static quantisation of the trunk's convolutions, calibrated on {calibration}; "
                        "CPU only, not part of --fast (it needs images); e.g. --int8-trunk 16")
