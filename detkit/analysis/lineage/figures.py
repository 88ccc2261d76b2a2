"""The lineage report's plots, as PNG files: test time by phase, speed against accuracy, proposal
recall against the number of proposals. matplotlib's object API on the Agg canvas (no pyplot, no
display), as :mod:`detkit.visualization.pr_curves`."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.analysis.lineage.measure import PHASES

# one colour per phase (colour-blind safe: Okabe-Ito)
PHASE_COLORS = {"proposals": "#E69F00", "trunk": "#0072B2", "region_head": "#009E73",
                "postprocess": "#CC79A7", "other": "#999999"}
PHASE_LABELS = {"proposals": "proposals (search / RPN)", "trunk": "trunk (shared conv layers)",
                "region_head": "region head", "postprocess": "post-processing", "other": "other (resize, mapping)"}


def _figure(width: float, height: float) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def phase_bars(methods: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One horizontal bar per method: its test time per image stacked by phase (log-free, in ms)."""
    fig, ax = _figure(8, 0.6 * len(methods) + 1.6)
    names = [m["title"] for m in methods]
    y = list(range(len(methods)))[::-1]
    left = [0.0] * len(methods)
    for phase in PHASES:
        ms = [float(m["timing"]["phases_ms"].get(phase, 0.0)) for m in methods]
        ax.barh(y, ms, left=left, color=PHASE_COLORS[phase], label=PHASE_LABELS[phase], height=0.6)
        left = [a + b for a, b in zip(left, ms)]
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {total:,.0f} ms", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(left) * 1.25 if max(left) > 0 else 1)
    ax.set_xlabel("test time per image (ms), by phase")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def speed_accuracy(methods: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """VOC07 mAP against test time per image (proposals included; log scale)."""
    fig, ax = _figure(6.5, 4.5)
    for m in methods:
        x = float(m["timing"]["total_ms"])
        y = m["metrics"]["voc07"]["mAP"] or 0.0
        ax.scatter([x], [y], s=50)
        ax.annotate(m["title"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("test time per image, proposals included (ms, log scale)")
    ax.set_ylabel("VOC07 mAP")
    ax.set_ylim(0, 1.0)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def recall_curves(recall: Mapping[str, Any], path: Path) -> Path:
    """Recall at IoU 0.5 (solid) and 0.7 (dashed) against proposals per image, one colour per source."""
    fig, ax = _figure(6.5, 4.5)
    colors = {"selective search": "#E69F00", "RPN": "#0072B2"}
    for source, result in recall["curves"].items():
        rows = [r for r in result["rows"] if r["count"] != "all"]
        xs = [r["count"] for r in rows]
        for t, style in (("0.5", "-"), ("0.7", "--")):
            ax.plot(xs, [r["recall"][t] for r in rows], style, marker="o", markersize=3,
                    color=colors.get(source), label=f"{source}, IoU {t}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("proposals per image (log scale)")
    ax.set_ylabel("recall of the ground truth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)
