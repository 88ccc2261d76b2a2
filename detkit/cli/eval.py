#!/usr/bin/env python
"""Score a detections file against a data set split: VOC07 / VOC10+ AP and COCO metrics.

Examples:
    python tools/eval.py --voc-root /path/to/bccd --split test --detections dets.json
    python tools/eval.py --voc-root VOC2007 --split test --detections dets.json --metric voc07 \\
        --out results.json --pr-curves pr.png
    python tools/eval.py --coco-json instances_val2017.json --image-root val2017 \\
        --detections dets.json --metric coco
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from detkit.evaluation import detections as detections_module

def _format_help() -> str:
    # The format is documented once, in detkit/evaluation/detections.py; reuse that text here
    # without its reStructuredText markup.
    doc = detections_module.__doc__.split("Format (", 1)[1].split("\n", 2)[2]
    doc = doc.replace("``", "").replace("**", "").replace("::", ":").rstrip()
    return "\n".join(("  " + line).rstrip() for line in doc.splitlines())


FORMAT_EPILOG = """\
detections file format (COCO results; written by tools/infer.py):
""" + _format_help() + """

metrics:
  voc07  VOC2007 11-point AP per class and mAP (devkit rules, IoU > --iou, difficult ignored)
  voc12  VOC2010+ area AP (same matching)
  coco   pycocotools COCOeval bbox: AP@[.5:.95], AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l
         (VOC difficult objects are passed as crowd, i.e. ignored)
  all    all of the above (default)

exit status: 0 on success, 2 on a usage error, a missing file or a malformed file.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Score a detections file against a VOC or COCO data set split.",
        epilog=FORMAT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("data set (VOC folders or a COCO annotation file)")
    src.add_argument("--voc-root", action="append", metavar="ROOT",
                     help="VOC root (Annotations/, ImageSets/Main/, JPEGImages/); repeat for 07+12")
    src.add_argument("--split", default="test", help="VOC split name (default: test)")
    src.add_argument("--classes", default=None,
                     help="comma-separated class names in label order (VOC default: the sorted names "
                          "found in the split, category ids 1..K in this order; COCO: a subset)")
    src.add_argument("--checkpoint", metavar="FILE", default=None,
                     help="take the class names (in label order) from the run that wrote the detections: "
                          "its run_dir/last.pt (only its class list is read); instead of --classes")
    src.add_argument("--coco-json", metavar="FILE", help="COCO annotation (ground truth) JSON")
    src.add_argument("--image-root", metavar="DIR", help="image folder of --coco-json")
    p.add_argument("--detections", required=True, metavar="FILE", help="detections file (format below)")
    p.add_argument("--metric", choices=["voc07", "voc12", "coco", "all"], default="all")
    p.add_argument("--iou", type=float, default=0.5, help="VOC overlap threshold (strict >, default 0.5)")
    p.add_argument("--out", metavar="FILE", help="write all results as JSON here")
    p.add_argument("--pr-curves", metavar="PNG", help="plot per-class precision-recall curves (VOC metrics)")
    p.add_argument("--quiet-coco", action="store_true", help="hide pycocotools' own summary printout")
    args = p.parse_args(argv)
    if bool(args.voc_root) == bool(args.coco_json):
        p.error("give either --voc-root (one or more) or --coco-json with --image-root")
    if args.classes and args.checkpoint:
        p.error("give --classes or --checkpoint, not both")
    if args.coco_json and not args.image_root:
        p.error("--coco-json needs --image-root")
    if not 0.0 <= args.iou < 1.0:
        p.error(f"--iou must be in [0, 1), got {args.iou}")
    return args


def load_data(args):
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.checkpoint:  # the run's own class order: its detections' category ids follow it
        from detkit.engine.checkpoint import load_checkpoint
        classes = list(load_checkpoint(args.checkpoint).get("class_names") or []) or classes
    if args.voc_root:
        from detkit.data.voc import load_voc
        return load_voc(args.voc_root, splits=args.split, class_names=classes)
    from detkit.data.coco import load_coco
    return load_coco(args.coco_json, args.image_root, class_names=classes)


def _write_json_atomic(path: Path, obj) -> None:
    from detkit.utils.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False))


def run(args) -> dict:
    from detkit.evaluation.coco import evaluate_coco, format_coco_table
    from detkit.evaluation.detections import load_detections
    from detkit.evaluation.voc import evaluate_voc, format_voc_table

    data = load_data(args)
    others: list[str] = []  # detections of images outside the split (infer on a whole folder)
    dets = load_detections(args.detections, data, skipped=others)
    if others:
        print(f"note: left out {len(others)} detections of {len(set(others))} images that are not in {data.name}",
              file=sys.stderr)
    n_det = sum(len(d["scores"]) for d in dets.values())
    print(f"{data.name}: {len(data)} images, {data.num_classes} classes; {n_det} detections from {args.detections}")
    report = {"data": data.name, "num_images": len(data), "classes": list(data.class_names),
              "detections": str(args.detections), "num_detections": n_det}
    voc_results = []
    for key, use_07 in (("voc07", True), ("voc12", False)):
        if args.metric in (key, "all"):
            r = evaluate_voc(dets, data, iou_threshold=args.iou, use_07_metric=use_07)
            print(f"\n{r.metric_name} AP\n{format_voc_table(r)}")
            report[key] = r.to_dict()
            voc_results.append(r)
    if args.metric in ("coco", "all"):
        metrics, text = evaluate_coco(dets, data, return_text=True)
        if not args.quiet_coco:  # its summary lines; the progress chatter is left out
            lines = [line for line in text.splitlines() if line.lstrip().startswith("Average")]
            print("\npycocotools COCOeval (bbox):\n" + "\n".join(lines))
        print(f"\nCOCO metrics\n{format_coco_table(metrics)}")
        report["coco"] = metrics
    if args.pr_curves:
        if voc_results:
            from detkit.visualization.pr_curves import plot_pr_curves

            print(f"\nprecision-recall curves -> {plot_pr_curves(voc_results[0], args.pr_curves)}")
        else:
            print("\n--pr-curves needs a VOC metric (voc07, voc12 or all); not plotted", file=sys.stderr)
    summary = []
    for key in ("voc07", "voc12"):
        if key in report:
            m = report[key]["mAP"]
            summary.append(f"{key} mAP {'n/a' if m is None else f'{m:.4f}'}")
    if "coco" in report:
        summary.append(f"coco AP {report['coco']['AP']:.4f} AP50 {report['coco']['AP50']:.4f}")
    print("\n" + " | ".join(summary))
    if args.out:
        _write_json_atomic(Path(args.out), report)
        print(f"results -> {args.out}")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (OSError, ValueError) as e:  # missing/bad files: one clear line, no traceback
        print(f"tools/eval.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
