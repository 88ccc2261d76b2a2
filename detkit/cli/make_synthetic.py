#!/usr/bin/env python
"""Write the synthetic shapes data set (Pascal VOC layout) used by the README demo and the tests.

    python tools/make_synthetic.py --out data/synthetic --num-images 300 --seed 0

See ``detkit.data.synthetic`` for what is drawn; the same arguments always give the same files.
"""
from __future__ import annotations

import argparse
import sys
import time

from detkit.data.synthetic import DEFAULT_CLASSES, make_synthetic_voc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True,
                   help="output folder (gets Annotations/, JPEGImages/, ImageSets/Main/)")
    p.add_argument("--num-images", type=int, default=300, help="number of images (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--min-side", type=int, default=160, help="smallest image side in pixels (default 160)")
    p.add_argument("--max-side", type=int, default=320, help="largest image side in pixels (default 320)")
    p.add_argument("--classes", nargs="+", default=list(DEFAULT_CLASSES), help="subset of: %(default)s")
    p.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = make_synthetic_voc(
            args.out,
            num_images=args.num_images,
            image_size=(args.min_side, args.max_side),
            classes=args.classes,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ValueError, OSError) as e:
        print(f"make_synthetic: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_images} images to {root} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
