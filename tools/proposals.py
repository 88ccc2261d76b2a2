#!/usr/bin/env python
"""Compute (or reuse) cached selective search proposals for a split and report their quality.

Prints recall at IoU 0.5 and 0.7 and the mean best overlap (MABO) against the ground truth by
number of proposals per image, and the search time per image.

Examples:
    python tools/proposals.py --voc-root ../shared/data/bccd --split test --mode fast \\
        --cache-dir outputs/proposals --workers 2
    python tools/proposals.py --voc-root ../shared/data/raccoon --split test --mode quality \\
        --cache-dir outputs/proposals --workers 2 --out results.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from detkit.data.problems import DataError  # noqa: E402
from detkit.data.record import DetectionData  # noqa: E402

EPILOG = """\
cache: <cache-dir>/<data set name>-<mode>-<max side>/<image_id>.npz (format in
detkit/proposals/cache.py); an interrupted run continues where it stopped.

time: "search s/img" is the mean selective search time of one image on one core (stored with each
image when it was computed); "wall s/img" is this run's wall time over the images it computed.

exit status: 0 on success, 2 on a usage error or a missing/malformed file.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tools/proposals.py", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data set (VOC folders or a COCO annotation file)")
    src.add_argument("--voc-root", action="append", metavar="ROOT", help="VOC root; repeat for 07+12")
    src.add_argument("--split", default="test", help="VOC split name (default: test)")
    src.add_argument("--coco-json", help="COCO annotation file (instead of --voc-root)")
    src.add_argument("--image-root", help="COCO image folder")
    src.add_argument("--limit", type=int, default=None, metavar="N",
                     help="use only the first N images of the split")
    ss = p.add_argument_group("selective search")
    ss.add_argument("--mode", choices=("fast", "quality", "single"), default="fast")
    ss.add_argument("--max-side", type=int, default=500,
                    help="shrink images to this longer side before searching; 0 = full size (default 500)")
    ss.add_argument("--min-size", type=float, default=20,
                    help="drop boxes with a side below this, in search-image pixels (default 20, R-CNN)")
    ss.add_argument("--max-proposals", type=int, default=None, help="keep at most this many per image")
    ss.add_argument("--cache-dir", default="outputs/proposals", help="cache parent folder")
    ss.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    ev = p.add_argument_group("report")
    ev.add_argument("--counts", default="10,50,100,300,500,1000,2000",
                    help="numbers of proposals per image to report (comma-separated)")
    ev.add_argument("--iou", default="0.5,0.7", help="IoU thresholds for recall (comma-separated)")
    ev.add_argument("--out", help="also write the figures as JSON here")
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if bool(args.voc_root) == bool(args.coco_json):
        p.error("give either --voc-root or --coco-json (with --image-root)")
    if args.coco_json and not args.image_root:
        p.error("--coco-json needs --image-root")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be positive")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    try:
        args.counts = [int(c) for c in args.counts.split(",") if c.strip()]
        args.iou = [float(t) for t in args.iou.split(",") if t.strip()]
    except ValueError:
        p.error("--counts and --iou must be comma-separated numbers")
    return args


def load_data(args) -> DetectionData:
    if args.voc_root:
        from detkit.data.voc import load_voc

        data = load_voc(args.voc_root, args.split)
    else:
        from detkit.data.coco import load_coco

        data = load_coco(args.coco_json, args.image_root)
    if args.limit is not None:
        data = DetectionData(records=data.records[: args.limit], class_names=data.class_names,
                             category_ids=data.category_ids, name=data.name)
    return data


def format_table(result: dict, seconds: float, wall: float | None, title: str) -> str:
    thresholds = [f"{t:g}" for t in result["iou_thresholds"]]
    head = ["proposals"] + [f"recall@{t}" for t in thresholds] + ["MABO", "ABO"]
    lines = [title,
             f"images {result['num_images']}  ground truths {result['num_gt']}  "
             f"mean proposals/image {result['mean_proposals']:.1f}",
             "  ".join(f"{h:>11}" for h in head)]
    for row in result["rows"]:
        cells = [str(row["count"])] + [f"{row['recall'][t]:.3f}" for t in thresholds]
        cells += [f"{row['mabo']:.3f}", f"{row['abo']:.3f}"]
        lines.append("  ".join(f"{c:>11}" for c in cells))
    timing = f"search s/img {seconds:.2f} (one core)"
    if wall is not None:
        timing += f"; wall s/img {wall:.2f} this run"
    lines.append(timing)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from detkit.evaluation.recall import proposal_recall
    from detkit.proposals.cache import compute_proposals, load_proposals

    max_side = args.max_side or None
    try:
        data = load_data(args)
        if not data.records:
            raise DataError(f"{data.name}: no images")
        done = []
        start = time.perf_counter()
        compute_proposals(data, args.cache_dir, mode=args.mode, max_side=max_side, min_size=args.min_size,
                          max_proposals=args.max_proposals, workers=args.workers,
                          progress=not args.no_progress, on_image=lambda *r: done.append(r))
        wall = time.perf_counter() - start
        boxes, seconds = load_proposals(args.cache_dir, data, mode=args.mode, max_side=max_side,
                                        with_seconds=True)
    except (DataError, OSError) as e:
        print(f"tools/proposals.py: error: {e}", file=sys.stderr)
        return 2
    result = proposal_recall(boxes, data, iou_thresholds=args.iou, counts=args.counts)
    result["mode"] = args.mode
    result["max_side"] = max_side
    result["data"] = data.name
    result["search_seconds_per_image"] = float(sum(seconds.values()) / len(seconds))
    result["wall_seconds_per_image"] = wall / len(done) if done else None
    result["workers"] = args.workers
    title = f"selective search {args.mode} (max side {max_side or 'full'}) on {data.name}"
    print(format_table(result, result["search_seconds_per_image"], result["wall_seconds_per_image"], title))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
