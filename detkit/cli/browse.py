"""Look at a data set before training on it: its ground truth drawn on images, counts and problems.

    detkit browse data=voc data.root=/path/to/set --out browse/
    detkit browse data=yolo data.root=DIR --split val --num 32 --out browse/
    detkit browse data=bccd data.root=DIR preset=cpu --augmented --out browse-aug/   # as training sees them

Positional arguments are overrides of configs/train.yaml (the data set, and the transforms of a
preset). Prints the problems the reader repaired or skipped (its lenient warnings), objects and
images per class and the box sizes; writes ``<out>/<image>.jpg`` for ``--num`` images (evenly
spread over the split) with the ground truth drawn, and ``<out>/stats.json``. ``--augmented`` draws
them after the training augmentation (resize, flip, colour jitter), as the detector sees them.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="configs/train.yaml overrides: data=..., data.root=..., preset=...")
    p.add_argument("--out", required=True, help="folder for the pictures and stats.json")
    p.add_argument("--split", default="train", help="train, val or test (default: train)")
    p.add_argument("--num", type=int, default=16, help="images to draw (default 16; 0: none)")
    p.add_argument("--augmented", action="store_true", help="draw after the training augmentation")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed with --augmented")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from detkit.data.images import read_image
    from detkit.data.problems import DataWarning
    from detkit.data.stats import describe, format_description
    from detkit.data.transforms import build_transforms
    from detkit.engine.config import compose_run_config
    from detkit.engine.setup import load_split, prepare_data
    from detkit.utils.atomic import atomic_write_text
    from detkit.visualization.draw import draw_detections, save_image

    conf = compose_run_config(args.overrides)
    data_cfg = conf["data"]
    if not data_cfg.get(args.split):
        raise ValueError(f"data config {data_cfg.get('name')!r} has no {args.split!r} split")
    prepare_data(data_cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        data = load_split(data_cfg, args.split)
    problems = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    stats = {**describe(data), "problems": problems}
    print(format_description(stats))
    print("\nproblems found: " + ("; ".join(problems) if problems else "none"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1))
    n = min(max(args.num, 0), len(data.records))
    picks = sorted({round(i * (len(data.records) - 1) / max(n - 1, 1)) for i in range(n)}) if n else []
    transform = build_transforms(train=True, seed=args.seed, **dict(data_cfg.get("transforms") or {})) \
        if args.augmented else None
    for i in picks:
        r = data.records[i]
        image, boxes, labels = read_image(r.file_name), r.boxes, r.labels
        if transform is not None:
            t = transform(image, boxes, labels=labels)
            image, boxes, labels = t["image"], t["boxes"], t["labels"]
        stem = (r.name or Path(r.file_name).stem).replace("/", "_")
        save_image(out / f"{stem}.jpg", draw_detections(image, boxes, labels, None, data.class_names))
    print(f"{len(picks)} picture(s) and stats.json -> {out}")
    return stats


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from detkit.data.problems import DataError
    from detkit.engine.config import ConfigError
    try:
        run(args)
    except (ConfigError, DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
