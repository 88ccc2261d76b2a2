#!/usr/bin/env python
"""Compute region proposals for a split (selective search, cached; or a trained Faster R-CNN's RPN)
and report their quality.

Prints recall at IoU 0.5 and 0.7 and the mean best overlap (MABO) against the ground truth by
number of proposals per image, and the time per image; optionally saves the proposals as a file
that Fast R-CNN trains on (data.proposals.file=...).

Examples:
    python tools/proposals.py --voc-root /path/to/bccd --split test --mode fast \\
        --cache-dir outputs/proposals --workers 2
    python tools/proposals.py --voc-root /path/to/bccd --split trainval --base-k 50 --inc-k 50
    python tools/proposals.py --voc-root /path/to/bccd --split test --proposer rpn \\
        --checkpoint outputs/bccd-faster_rcnn-vgg16/last.pt --device cuda --save rpn_test.npz
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from detkit.data.problems import DataError
from detkit.data.record import DetectionData

EPILOG = """\
selective search cache: <cache-dir>/<mode>-<max side>-min<min size>-k<base k>-<inc k>-sigma<sigma>/
<hash of the image file>.npz (format in detkit/proposals/cache.py): keyed by the image's content
and the settings, not by the split, so tools/train.py with the same data.proposals settings and
cache_dir reuses it, and an interrupted run continues where it stopped.

rpn: the checkpoint's Faster R-CNN runs on each image resized as in its training config's test
transform (data.transforms min/max size); its RPN's proposals (after NMS, by objectness) are
mapped back to original-image pixels. --rpn-top-n raises the test-time post-NMS count (300 by
default in the paper) to report recall at more proposals.

time: selective search "search s/img" is the mean search time of one image on one core (stored
with each image when it was computed), "wall s/img" this run's wall time over the images it
computed; rpn "s/img" is the wall time of the trunk + RPN (image loading excluded).

exit status: 0 on success, 2 on a usage error or a missing/malformed file or checkpoint.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data set (VOC folders or a COCO annotation file)")
    src.add_argument("--voc-root", action="append", metavar="ROOT", help="VOC root; repeat for 07+12")
    src.add_argument("--split", default="test", help="VOC split name (default: test)")
    src.add_argument("--coco-json", help="COCO annotation file (instead of --voc-root)")
    src.add_argument("--image-root", help="COCO image folder")
    src.add_argument("--limit", type=int, default=None, metavar="N",
                     help="use only the first N images of the split")
    p.add_argument("--proposer", choices=("selective_search", "rpn"), default="selective_search",
                   help="where the proposals come from (default: selective_search)")
    p.add_argument("--max-proposals", type=int, default=None, help="keep at most this many per image")
    p.add_argument("--save", metavar="FILE", help="also write the proposals as FILE (.npz or .json, the format of "
                   "detkit.proposals.cache.read_proposals_file) for data.proposals.file=FILE")
    ss = p.add_argument_group("selective search")
    ss.add_argument("--mode", choices=("fast", "quality", "single"), default="fast")
    ss.add_argument("--max-side", type=int, default=500,
                    help="shrink images to this longer side before searching; 0 = full size (default 500)")
    ss.add_argument("--min-size", type=float, default=20,
                    help="drop boxes with a side below this, in search-image pixels (default 20, R-CNN)")
    ss.add_argument("--base-k", type=int, default=150,
                    help="graph segmentation k of the first segmentation (OpenCV default 150; smaller = more boxes)")
    ss.add_argument("--inc-k", type=int, default=150, help="step of k between the segmentations (default 150)")
    ss.add_argument("--sigma", type=float, default=0.8, help="graph segmentation Gaussian smoothing (default 0.8)")
    ss.add_argument("--cache-dir", default="outputs/proposals", help="cache parent folder")
    ss.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    rpn = p.add_argument_group("rpn (--proposer rpn)")
    rpn.add_argument("--checkpoint", help="a Faster R-CNN checkpoint (run_dir/last.pt)")
    rpn.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    rpn.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    rpn.add_argument("--loader-workers", type=int, default=2, help="image loading processes (default 2)")
    rpn.add_argument("--rpn-top-n", type=int, default=None,
                     help="proposals kept after NMS per image (default: the checkpoint's test setting)")
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
    if args.proposer == "rpn" and not args.checkpoint:
        p.error("--proposer rpn needs --checkpoint (a Faster R-CNN run's last.pt)")
    for flag in ("limit", "max_proposals", "rpn_top_n"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if args.workers < 1 or args.batch_size < 1 or args.loader_workers < 0:
        p.error("--workers and --batch-size must be >= 1, --loader-workers >= 0")
    if args.base_k < 1 or args.inc_k < 0 or args.sigma < 0:
        p.error("need --base-k >= 1, --inc-k >= 0, --sigma >= 0")
    if args.save and Path(args.save).suffix not in (".npz", ".json"):
        p.error("--save must end in .npz or .json")
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


def format_table(result: dict, timing: str, title: str) -> str:
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
    lines.append(timing)
    return "\n".join(lines)


def selective_search_proposals(args, data: DetectionData) -> tuple[dict, dict, str, str]:
    """Compute (or reuse) the cache; -> (boxes, report fields, table title, timing line)."""
    from detkit.proposals.cache import compute_proposals, load_proposals, search_settings

    settings = search_settings(mode=args.mode, max_side=args.max_side or None, min_size=args.min_size,
                               base_k=args.base_k, inc_k=args.inc_k, sigma=args.sigma)
    done = []
    start = time.perf_counter()
    folder = compute_proposals(data, args.cache_dir, workers=args.workers, progress=not args.no_progress,
                               on_image=lambda *r: done.append(r), **settings)
    wall = time.perf_counter() - start
    boxes, seconds = load_proposals(args.cache_dir, data, max_proposals=args.max_proposals,
                                    with_seconds=True, **settings)
    fields = {**settings, "cache": str(folder), "workers": args.workers,
              "search_seconds_per_image": float(sum(seconds.values()) / len(seconds)),
              "wall_seconds_per_image": wall / len(done) if done else None}
    timing = f"search s/img {fields['search_seconds_per_image']:.2f} (one core)"
    if done:
        timing += f"; wall s/img {fields['wall_seconds_per_image']:.2f} this run"
    title = (f"selective search {args.mode} (max side {settings['max_side'] or 'full'}, k {args.base_k}"
             f"+{args.inc_k}, sigma {args.sigma:g}) on {data.name}")
    return boxes, fields, title, timing


def rpn_proposals(args, data: DetectionData) -> tuple[dict, dict, str, str]:
    """Run a Faster R-CNN checkpoint's trunk + RPN over ``data``; -> (boxes, fields, title, timing).

    Boxes: ``{image_id: (P, 4) float32}`` original-image xyxy, by descending objectness.
    """
    from detkit.data.transforms import eval_transforms
    from detkit.engine.checkpoint import CheckpointError, model_from_checkpoint
    from detkit.engine.distributed import resolve_device
    from detkit.engine.inference import rpn_proposals as run_rpn
    from detkit.proposals.rpn import RegionProposalNetwork

    model, ckpt = model_from_checkpoint(args.checkpoint)
    if not isinstance(getattr(model, "rpn", None), RegionProposalNetwork):
        method = (ckpt.get("config") or {}).get("method", {}).get("name", type(model).__name__)
        raise CheckpointError(f"{args.checkpoint}: a {method!r} model has no region proposal network; "
                              "--proposer rpn needs a Faster R-CNN checkpoint")
    # test-time post-NMS count: --rpn-top-n, else the model's rpn_post_nms_top_n_test
    top_n = int(args.rpn_top_n) if args.rpn_top_n is not None else model.rpn.post_nms_top_n[False]
    tf = dict((ckpt["config"].get("data") or {}).get("transforms") or {})
    device = resolve_device(args.device)
    timing: dict[str, float] = {}
    boxes = run_rpn(model, data, eval_transforms(tf), device=device, top_n=top_n, batch_size=args.batch_size,
                    num_workers=args.loader_workers, progress=not args.no_progress, timing=timing)
    boxes = {i: b[: args.max_proposals] for i, b in boxes.items()}
    seconds = timing["seconds"]
    fields = {"checkpoint": str(args.checkpoint), "method": ckpt["config"].get("method", {}).get("name"),
              "device": str(device), "post_nms_top_n": top_n, "seconds_per_image": seconds / len(data.records),
              "transforms": {"min_size": tf.get("min_size", 600), "max_size": tf.get("max_size", 1000)}}
    title = f"rpn of {args.checkpoint} (top {top_n} after NMS) on {data.name}"
    return boxes, fields, title, f"trunk + rpn s/img {fields['seconds_per_image']:.4f} on {device}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from detkit.engine.checkpoint import CheckpointError
    from detkit.evaluation.recall import proposal_recall
    from detkit.proposals.cache import write_proposals_file

    try:
        data = load_data(args)
        if not data.records:
            raise DataError(f"{data.name}: no images")
        make = rpn_proposals if args.proposer == "rpn" else selective_search_proposals
        boxes, fields, title, timing = make(args, data)
        if args.save:
            write_proposals_file(args.save, boxes, data)
    except (DataError, OSError, CheckpointError) as e:
        print(f"tools/proposals.py: error: {e}", file=sys.stderr)
        return 2
    result = proposal_recall(boxes, data, iou_thresholds=args.iou, counts=args.counts)
    result.update(fields, proposer=args.proposer, data=data.name, saved=args.save)
    print(format_table(result, timing, title))
    if args.save:
        print(f"proposals -> {args.save}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
