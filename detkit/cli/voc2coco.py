"""Convert VOC splits to one COCO ground-truth JSON (for pycocotools COCOeval).

    python tools/voc2coco.py --root /path/to/bccd --split test --out bccd_test.json
    python tools/voc2coco.py --root VOC2007 --root VOC2012 --split trainval --out voc0712.json

Every --root is paired with every --split (as ``detkit.data.voc.load_voc``). Image ``file_name``s
are written relative to ``<root>/JPEGImages``; image ids are ``load_voc``'s positions.
"""
from __future__ import annotations

import argparse
import sys

from detkit.data.convert import write_coco_json
from detkit.data.problems import DataError
from detkit.data.voc import load_voc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", action="append", required=True, help="VOC root (repeatable)")
    p.add_argument("--split", action="append", required=True, help="split name (repeatable)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--classes", nargs="+", default=None, help="class names in label order (default: discovered)")
    p.add_argument("--strict", action="store_true", help="stop at the first fault instead of repairing")
    p.add_argument("--keep-empty", action=argparse.BooleanOptionalAction, default=True,
                   help="keep images without objects (default: yes)")
    p.add_argument("--difficult-as-crowd", action=argparse.BooleanOptionalAction, default=True,
                   help="write difficult objects as iscrowd=1 so COCOeval ignores them (default: yes)")
    args = p.parse_args(argv)
    try:
        data = load_voc(args.root, args.split, args.classes, keep_empty=args.keep_empty, strict=args.strict)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = write_coco_json(data, args.out, difficult_as_crowd=args.difficult_as_crowd)
    n_boxes = sum(r.num_objects for r in data.records)
    print(f"{data.name}: wrote {len(data)} images, {n_boxes} boxes, {data.num_classes} classes "
          f"({', '.join(data.class_names)}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
