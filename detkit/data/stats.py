"""What a data set holds, before training on it: objects per class, box sizes, images without objects.

``describe(data)`` counts from the records alone (no image is decoded): per class the objects,
the images they appear in and the difficult ones; the images without objects; and a histogram of
box sizes ``sqrt(w * h)`` in the file's pixels, on the COCO size bands (small < 32 px, medium
< 96 px, large) and in octaves. ``format_description`` prints it as text.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from detkit.data.record import DetectionData

__all__ = ["describe", "format_description"]

OCTAVES = (0, 8, 16, 32, 64, 128, 256, 512, 1024, math.inf)


def describe(data: DetectionData) -> dict[str, Any]:
    """Counts of ``data`` (module docstring) as a JSON-ready dict."""
    k = data.num_classes
    objects = np.zeros(k, dtype=np.int64)
    images = np.zeros(k, dtype=np.int64)
    difficult = np.zeros(k, dtype=np.int64)
    sides, empty = [], 0
    for r in data.records:
        if not len(r.labels):
            empty += 1
            continue
        np.add.at(objects, r.labels, 1)
        np.add.at(difficult, r.labels[r.difficult], 1)
        images[np.unique(r.labels)] += 1
        wh = np.clip(r.boxes[:, 2:] - r.boxes[:, :2], 0, None)
        sides.append(np.sqrt(wh[:, 0] * wh[:, 1]))
    side = np.concatenate(sides) if sides else np.zeros(0)
    octaves = [{"from": lo, "to": hi if math.isfinite(hi) else None, "boxes": int(((side >= lo) & (side < hi)).sum())}
               for lo, hi in zip(OCTAVES[:-1], OCTAVES[1:])]
    return {
        "name": data.name, "images": len(data.records), "images_without_objects": empty,
        "objects": int(objects.sum()),
        "classes": [{"name": n, "objects": int(objects[i]), "images": int(images[i]), "difficult": int(difficult[i])}
                    for i, n in enumerate(data.class_names)],
        "box_side_px": {"small (<32)": int((side < 32).sum()), "medium (32-96)": int(((side >= 32) & (side < 96)).sum()),
                        "large (>=96)": int((side >= 96).sum()),
                        "percentiles": {str(p): float(np.percentile(side, p)) for p in (2, 25, 50, 75, 98)}
                        if len(side) else {}},
        "box_side_octaves": [o for o in octaves if o["boxes"]],
    }


def format_description(d: dict[str, Any]) -> str:
    """The description as a few lines of text."""
    width = max([5, *(len(c["name"]) for c in d["classes"])])
    lines = [f"{d['name']}: {d['images']} images ({d['images_without_objects']} without objects), "
             f"{d['objects']} objects", "", f"{'class':<{width}}  {'objects':>8}  {'images':>7}  {'difficult':>9}"]
    lines += [f"{c['name']:<{width}}  {c['objects']:>8}  {c['images']:>7}  {c['difficult']:>9}" for c in d["classes"]]
    sizes = d["box_side_px"]
    lines += ["", "box size sqrt(w*h) in the image's pixels: " + ", ".join(
        f"{k} {v}" for k, v in sizes.items() if k != "percentiles")]
    if sizes.get("percentiles"):
        lines.append("percentiles 2/25/50/75/98: " + " / ".join(f"{v:.0f}" for v in sizes["percentiles"].values()))
    total = max(d["objects"], 1)
    for o in d["box_side_octaves"]:
        hi = "" if o["to"] is None else f"{o['to']}"
        bar = "#" * max(1, round(40 * o["boxes"] / total))
        lines.append(f"  {o['from']:>5}-{hi:<5} px {o['boxes']:>7}  {bar}")
    return "\n".join(lines)
