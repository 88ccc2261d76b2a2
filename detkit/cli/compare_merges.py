#!/usr/bin/env python
"""Compare OverFeat's post-processing on one checkpoint: greedy merging (summed or best-member
confidence, several thresholds) against NMS, on the same dense candidates, by VOC07 mAP.

The network runs once per image; each variant re-merges the same candidates (detkit.analysis.
merge_compare). The checkpoint's own test-time transform (data.transforms min/max size) is used.

Examples:
    python tools/compare_merges.py --checkpoint outputs/raccoon-overfeat/last.pt \\
        --voc-root /path/to/raccoon --split test
    python tools/compare_merges.py --checkpoint RUN/last.pt --voc-root VOC2007 --split val --out merges.json

exit status: 0 on success, 2 on a usage error, a missing or unreadable checkpoint or data set, or a
checkpoint that is not OverFeat's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an OverFeat checkpoint (RUN/last.pt)")
    p.add_argument("--voc-root", required=True, help="VOC root (Annotations/, ImageSets/Main/, JPEGImages/)")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--set", dest="override", action="append", default=[], metavar="KEY=VALUE",
                   help="change the checkpoint's stored config first (e.g. method.model.scales=[1.0,0.7] or "
                        "method.model.score_thresh=0.1: what the candidates are); repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    from detkit.analysis.benchmarking.merge_compare import compare_merges, dense_candidates, format_rows, require_overfeat
    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import eval_transforms
    from detkit.data.voc import load_voc
    from detkit.engine.checkpoint import model_from_checkpoint
    from detkit.engine.distributed import resolve_device

    model, ckpt = model_from_checkpoint(args.checkpoint, args.override)
    require_overfeat(model, source=str(args.checkpoint))
    data = load_voc(args.voc_root, args.split, list(ckpt["class_names"]))  # DataError is a ValueError
    if args.limit is not None:
        data = dataclasses.replace(data, records=data.records[:args.limit])
    dataset = DetectionDataset(data, eval_transforms((ckpt["config"].get("data") or {}).get("transforms")))
    cands = dense_candidates(model, dataset, device=resolve_device(args.device), progress=not args.no_progress)
    rows = compare_merges(cands, data, max_detections=model.detections_per_img)
    print(f"{args.checkpoint} on {args.voc_root} {args.split} ({len(data)} images); the model's own setting: "
          f"{model.merge_kwargs()['method']}")
    print(format_rows(rows))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"checkpoint": str(args.checkpoint), "voc_root": str(args.voc_root),
                                              "split": args.split, "images": len(data), "rows": rows}, indent=1))
    return rows


def main(argv=None) -> int:
    from detkit.engine.checkpoint import CheckpointError

    args = parse_args(argv)
    try:
        run(args)
    except (CheckpointError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
