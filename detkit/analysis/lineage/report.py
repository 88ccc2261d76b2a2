"""The lineage report: one self-contained HTML page (every picture embedded; it opens offline).

:func:`write_report` turns ``lineage.json`` (:mod:`detkit.analysis.lineage.run`) and the methods'
``detections.json`` into ``index.html``: the table of methods (what each changed, VOC07 / VOC10+ /
COCO AP, AP per class, training time, test time with and without proposals, regions per image),
the same test images with every method's detections beside the ground truth, test time by phase,
speed against accuracy, proposal recall, precision-recall curves per method, and the commands,
machine, versions and commit. The PNG plots are also written to ``figures/`` beside it.

Each method's pictures show its detections at its own operating point: per class, the score
threshold of the best F1 on the test split (VOC matching at IoU 0.5), since the methods' scores are
not on one scale (R-CNN's and SPPNet's SVM margins, the others' softmax probabilities).
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detkit.analysis.lineage import figures
from detkit.data.record import DetectionData

TILE = 240  # longer side of an image tile, pixels: six columns fit a laptop screen

# The page reports on itself whether every picture decoded (read by the browser test).
_SELF_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
});
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 12px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.idea { min-width: 280px; max-width: 420px; font-size: 0.9em; }
table.grid td { padding: 2px; border: none; }
table.grid th { border: none; background: none; }
img.tile { display: block; }
.fig { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
code, pre { background: #f6f6f6; }
pre { padding: 8px; white-space: pre-wrap; }
.small { font-size: 0.85em; color: #555; }
</style>"""


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _jpeg_uri(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("lineage report: OpenCV could not encode an image tile as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def operating_thresholds(result, detections: Mapping[int, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Per class, the score of the best-F1 point of ``result``'s precision-recall curve
    (``inf`` for a class without detections or ground truth): ``(K,)``."""
    k = len(result.class_names)
    out = np.full(k, np.inf)
    for c in range(k):
        scores = np.concatenate([np.asarray(d["scores"])[np.asarray(d["labels"]) == c] for d in detections.values()]
                                or [np.zeros(0)])
        rec, prec = result.recall[c], result.precision[c]
        if len(scores) == 0 or len(rec) != len(scores) or not np.isfinite(rec).any():
            continue
        scores = np.sort(scores)[::-1]  # the curve's order: descending score
        f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
        if np.nanmax(f1) > 0:  # no true positive at all: nothing is worth drawing
            out[c] = scores[int(np.nanargmax(f1))]
    return out


def _tile(rgb: np.ndarray, boxes, labels, scores, names) -> np.ndarray:
    from detkit.visualization.draw import draw_detections

    h, w = rgb.shape[:2]
    s = min(1.0, TILE / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    # score_threshold=-inf: the caller chose the boxes; R-CNN's SVM margins may be negative
    return draw_detections(small, np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * s, labels, scores, names,
                           score_threshold=-np.inf, thickness=2, font_scale=0.4)


def _train_seconds(metrics: Mapping[str, Any]) -> float | None:
    if metrics.get("train_seconds") is not None:
        return float(metrics["train_seconds"])
    stages = metrics.get("stages") or {}
    return sum(float(v.get("seconds") or 0) for v in stages.values() if isinstance(v, dict)) if stages else None


def _methods_table(doc: Mapping[str, Any]) -> str:
    head = ["method", "what changed", "VOC07 mAP", "VOC10+ mAP", "COCO AP", "COCO AP50", "train s",
            "test ms/img (with proposals)", "test ms/img (without)", "proposals", "regions/img"]
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for m in doc["methods"]:
        met, t = m["metrics"], m["timing"]
        coco = met.get("coco") or {}
        without = t["total_ms"] - t["phases_ms"].get("proposals", 0.0)
        cells = [f"<b>{html.escape(m['title'])}</b><br><span class=small>{html.escape(m['paper'])}"
                 + (" · given checkpoint" if m.get("given") else "") + "</span>",
                 html.escape(m["idea"]), _num(met["voc07"]["mAP"]), _num(met["voc12"]["mAP"]),
                 _num(coco.get("AP")), _num(coco.get("AP50")), _num(_train_seconds(met), 0),
                 f"{t['total_ms']:,.1f}", f"{without:,.1f}", html.escape(str(t.get("proposal_source", ""))),
                 f"{t['rois_per_image']:,.0f}"]
        rows.append("<tr>" + "".join(f"<td class={'idea' if i == 1 else 'num' if i > 1 else 'm'}>{c}</td>"
                                     for i, c in enumerate(cells)) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _class_table(doc: Mapping[str, Any]) -> str:
    """VOC07 AP per class (rows) and method (columns), with the ground-truth count."""
    methods = doc["methods"]
    rows = ["<tr><th>class</th><th>objects</th>" + "".join(f"<th>{html.escape(m['title'])}</th>" for m in methods)
            + "</tr>"]
    for c in doc["classes"]:
        per = [((m["metrics"].get("voc07") or {}).get("per_class") or {}).get(c) or {} for m in methods]
        npos = next((p["npos"] for p in per if "npos" in p), None)
        rows.append(f"<tr><td>{html.escape(c)}</td><td class=num>{'' if npos is None else npos}</td>"
                    + "".join(f"<td class=num>{_num(p.get('ap'))}</td>" for p in per) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _image_grid(doc: Mapping[str, Any], data: DetectionData, detections: dict[str, dict],
                thresholds: dict[str, np.ndarray]) -> str:
    from detkit.data.images import read_image

    records = {r.image_id: r for r in data.records}
    names = list(data.class_names)
    head = "<tr><th>ground truth</th>" + "".join(f"<th>{html.escape(m['title'])}</th>" for m in doc["methods"]) + "</tr>"
    rows = [head]
    for image_id in doc["shown_images"]:
        r = records[image_id]
        rgb = read_image(r.file_name)
        cells = [_tile(rgb, r.boxes, r.labels, None, names)]
        for m in doc["methods"]:
            d = detections[m["method"]].get(image_id) or {"boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                                                          "labels": np.zeros(0, dtype=np.int64)}
            labels = np.asarray(d["labels"], dtype=np.int64)
            keep = np.asarray(d["scores"]) >= thresholds[m["method"]][labels] if len(labels) else np.zeros(0, bool)
            cells.append(_tile(rgb, np.asarray(d["boxes"])[keep], labels[keep], np.asarray(d["scores"])[keep], names))
        caption = html.escape(Path(r.file_name).name)
        rows.append("<tr>" + "".join(f"<td><img class=tile src='{_jpeg_uri(c)}' alt='{caption}'></td>" for c in cells)
                    + "</tr>")
    return "<table class=grid>" + "\n".join(rows) + "</table>"


def _hardware(machine: Mapping[str, Any], device: str) -> str:
    return str((machine.get("gpu") if str(device).startswith("cuda") else None) or machine.get("cpu") or "")


def _fig(path: Path, alt: str, caption: str) -> str:
    return (f"<div class=fig><img src='{_png_uri(path)}' alt='{html.escape(alt)}'>"
            f"<div class=small>{caption}</div></div>")


def write_report(doc: Mapping[str, Any], data: DetectionData, out: str | Path) -> Path:
    """Write ``out/index.html`` (and ``out/figures/*.png``) from a lineage document; returns the page."""
    from detkit.evaluation.detections import load_detections
    from detkit.evaluation.voc import evaluate_voc
    from detkit.visualization.pr_curves import plot_pr_curves

    out = Path(out)
    fig_dir = out / "figures"
    methods = doc["methods"]
    detections, thresholds, pr_figs = {}, {}, []
    for m in methods:
        dets = load_detections(out / m["method"] / "detections.json", data)
        result = evaluate_voc(dets, data, use_07_metric=True)
        detections[m["method"]] = dets
        thresholds[m["method"]] = operating_thresholds(result, dets)
        path = plot_pr_curves(result, fig_dir / f"pr_{m['method']}.png",
                              title=f"{m['title']}: VOC07 mAP {_num(result.map)}")
        pr_figs.append(_fig(path, f"precision-recall curves of {m['title']}", m["title"]))
    phase = figures.phase_bars(methods, fig_dir / "phases.png")
    speed = figures.speed_accuracy(methods, fig_dir / "speed_accuracy.png")
    recall_html = ""
    if doc.get("proposal_recall") and doc["proposal_recall"]["curves"]:
        rec = figures.recall_curves(doc["proposal_recall"], fig_dir / "proposal_recall.png")
        recall_html = ("<h2>Proposals: selective search against the RPN</h2>"
                       + _fig(rec, "proposal recall against the number of proposals",
                              "Recall of the test split's ground truth by the first N proposals of each image "
                              "(the Faster R-CNN paper's comparison). The RPN is the trained Faster R-CNN's, "
                              "at up to 2000 boxes after NMS."))
    machine = doc.get("machine") or {}
    git = doc.get("git") or {}
    commands = "\n".join([doc.get("command") or ""] + [f"# {k}\n{v}" for k, v in (doc.get("train_commands") or {}).items() if v])
    failed = doc.get("failed") or {}
    body = [
        f"<h1>The detector lineage on {html.escape(doc['data'])}</h1>",
        f"<p>{len(methods)} methods, the same data, backbone and evaluator; {doc['num_test_images']} test images. "
        "Each row keeps the previous method's parts but one.</p>",
        ("<p><b>Not shown:</b> " + "; ".join(f"{html.escape(m)}: {html.escape(str(r))}" for m, r in failed.items())
         + "</p>") if failed else "",
        _methods_table(doc),
        "<p class=small>Test time: mean over the images below, one image per call, on "
        f"{html.escape(str(_hardware(machine, methods[0]['timing']['device'])))} "
        f"({html.escape(str(methods[0]['timing']['device']))}, "
        f"{machine.get('torch_threads', '?')} threads). Selective search time is the cache's per-image search "
        "time on one core over the whole test split; \"without\" leaves out the proposals phase "
        "(the search, or the RPN). Regions: boxes the region head ran on (OverFeat: its dense windows).</p>",
        "<h2>AP per class (VOC07)</h2>", _class_table(doc),
        "<h2>Detections</h2><p class=small>Each method at its own operating point (per class, the score "
        "threshold of its best F1 on the test split).</p>",
        _image_grid(doc, data, detections, thresholds),
        "<h2>Where the test time goes</h2>",
        _fig(phase, "test time by phase", "Test time per image by phase."),
        _fig(speed, "speed against accuracy", "VOC07 mAP against test time per image."),
        recall_html,
        "<h2>Precision-recall per class</h2>", *pr_figs,
        "<h2>How this page was made</h2>",
        f"<pre>{html.escape(commands)}</pre>",
        f"<p class=small>Machine: {html.escape(str(machine))}<br>Commit: {html.escape(str(git.get('commit')))}"
        f"{' (with uncommitted changes)' if git.get('dirty') else ''}</p>",
    ]
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            f"<title>detkit lineage: {html.escape(doc['data'])}</title>{_STYLE}</head><body>"
            + "\n".join(body) + _SELF_CHECK + "</body></html>\n")
    from detkit.utils.atomic import atomic_write_text

    path = out / "index.html"
    atomic_write_text(path, page)
    return path
