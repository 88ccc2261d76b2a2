"""The detector lineage side by side: train (or take) R-CNN, SPPNet, OverFeat, Fast R-CNN and Faster
R-CNN on one data set with one backbone, test them alike and write one HTML report.

    detkit lineage data=bccd data.root=/path/to/bccd --out outputs/lineage/bccd
    detkit lineage data=raccoon data.root=DIR --out DIR2 --budget 300 --budget-of rcnn=180
    detkit lineage data=voc07 data.root=DIR preset=paper backbone=vgg16 --out DIR3 --budget 3600
    detkit lineage data=bccd data.root=DIR --out DIR4 --checkpoint faster_rcnn=runs/faster/last.pt

Positional arguments are configs/train.yaml overrides shared by every method (``preset=cpu`` by
default: a half-width AlexNet-BN for CPUs); ``METHOD:KEY=VALUE`` applies to one method only
(``rcnn:method.model.batch_regions=64``). Open ``--out``/index.html in a browser; it needs no
network. Running the same command again continues: finished methods are not trained again.
See docs/lineage.md.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys

from detkit.analysis.lineage.steps import METHODS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detkit lineage", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("overrides", nargs="*", help="configs/train.yaml overrides for every method (data=..., ...)")
    p.add_argument("--out", required=True, help="the lineage folder: one run folder per method, index.html")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"which methods (default: all five: {' '.join(METHODS)})")
    p.add_argument("--budget", type=float, default=240.0,
                   help="training seconds per method (R-CNN, SPPNet: their fine-tuning stage; default 240)")
    p.add_argument("--budget-of", action="append", default=[], metavar="METHOD=SECONDS",
                   help="another budget for one method (repeatable)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="METHOD=PATH",
                   help="test this trained checkpoint instead of training the method (repeatable)")
    p.add_argument("--proposals", type=int, default=300,
                   help="selective search boxes per image for R-CNN, SPPNet and Fast R-CNN (default 300)")
    p.add_argument("--images", type=int, default=4, help="test images shown with every method's detections (default 4)")
    p.add_argument("--workers", type=int, default=2, help="selective search processes (default 2)")
    a = p.parse_args(argv)
    if not math.isfinite(a.budget) or a.budget <= 0 or a.proposals < 1 or a.images < 1 or a.workers < 1:
        p.error("--budget, --proposals, --images and --workers must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    from detkit.analysis.lineage.run import parse_assignments, run_lineage

    try:
        budgets = {}
        for m, v in parse_assignments(a.budget_of, "--budget-of").items():
            try:
                budgets[m] = float(v)
            except ValueError:
                raise ValueError(f"--budget-of {m}={v}: the budget must be a number of seconds") from None
        checkpoints = parse_assignments(a.checkpoint, "--checkpoint")
        page = run_lineage(a.overrides, out=a.out, methods=a.methods, budget_s=a.budget, budgets=budgets,
                           proposals=a.proposals, checkpoints=checkpoints, num_images=a.images, workers=a.workers,
                           command=shlex.join(["detkit", "lineage", *argv]))
    except (ValueError, OSError, RuntimeError) as e:
        print(f"detkit lineage: error: {e}", file=sys.stderr)
        return 2
    print(f"open {page} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
