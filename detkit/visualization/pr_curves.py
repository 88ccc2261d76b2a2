"""Precision-recall curves of a VOC evaluation, one curve per class, into one PNG.

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so it works without a
display and leaves the caller's pyplot backend and state alone.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkit.evaluation.voc import VOCResult
from detkit.visualization.draw import class_color

__all__ = ["plot_pr_curves"]


def plot_pr_curves(result: VOCResult, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Plot precision against recall for every class of ``result`` (legend: name and AP).

    The raw per-detection curve is drawn (``result.recall[k]``, ``result.precision[k]``), which is
    what the AP integrates after taking the precision envelope. Classes without ground truth
    (AP NaN) are listed in the legend but have no curve. Returns the written path.
    """
    path = Path(path)
    fig = Figure(figsize=(7, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k, name in enumerate(result.class_names):
        ap = float(result.ap[k])
        color = tuple(c / 255 for c in class_color(k))
        if math.isnan(ap):
            ax.plot([], [], color=color, label=f"{name} (no ground truth)")
            continue
        rec, prec = result.recall[k], result.precision[k]
        # start at recall 0 with the first precision, so a one-detection class still shows
        xs = [0.0, *rec.tolist()] if len(rec) else [0.0]
        ys = [float(prec[0]) if len(prec) else 0.0, *prec.tolist()]
        ax.plot(xs, ys, color=color, linewidth=1.5, drawstyle="steps-post", label=f"{name} (AP {ap:.3f})")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    m = result.map
    ax.set_title(title or f"{result.metric_name}: mAP {'n/a' if math.isnan(m) else f'{m:.4f}'}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
