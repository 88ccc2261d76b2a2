"""From experiment-group JSONs (``detkit.analysis.suite.experiments``) to docs: markdown tables placed
between markers in docs/results.md, and a speed-accuracy plot.

Markers (one pair per group; the text between them is replaced, the rest of the file kept)::

    <!-- experiments:headline -->
    ...generated...
    <!-- /experiments:headline -->

A group without markers in the file is appended as a new section ``## Experiments: <group>``.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class ReportError(ValueError):
    """A results file that cannot be read or is not a group JSON (names the file)."""


def load_groups(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Group JSONs from files or folders (every ``*.json`` of a folder), in the order given."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise ReportError(f"{p}: no such results file or folder")
    groups = []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise ReportError(f"{f}: cannot read results JSON: {e}") from None
        if not isinstance(doc, dict) or "group" not in doc or not isinstance(doc.get("runs"), list):
            raise ReportError(f"{f}: not an experiments group JSON (needs 'group' and 'runs')")
        groups.append(doc)
    if not groups:
        raise ReportError(f"no group JSONs found in {[str(p) for p in paths]}")
    return groups


# ---------------------------------------------------------------------------- numbers of a run
def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def run_numbers(entry: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers of one train run entry (``None`` where absent)."""
    r = entry.get("result") or {}
    t = r.get("test_seconds_per_image")
    tm = r.get("test_model_seconds_per_image", r.get("seconds_per_image"))
    return {"data": r.get("data"), "iteration": r.get("iteration"), "train_seconds": r.get("train_seconds"),
            "img_s": r.get("train_images_per_second"), "stopped_by": r.get("stopped_by"),
            "map07": _get(r, "voc07", "mAP"), "ap07": _get(r, "voc07", "ap") or {}, "ap50": _get(r, "coco", "AP50"),
            "test_ms": None if t is None else 1000.0 * t, "model_ms": None if tm is None else 1000.0 * tm}


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _machine_line(group: dict[str, Any]) -> str:
    for e in group["runs"]:
        r = e.get("result") or {}
        m, g = r.get("machine"), r.get("git")
        if m:
            where = m.get("gpu") or f"{m.get('cpu')} ({m.get('cpu_cores')} cores)"
            g = g if (g or {}).get("commit") else group.get("git")
            commit = (g or {}).get("commit") or "unknown"
            dirty = " + uncommitted changes" if (g or {}).get("dirty") else ""
            return (f"Machine: {where}; torch {m.get('torch')}, torchvision {m.get('torchvision')}, "
                    f"CUDA {m.get('cuda')}; commit `{commit[:12]}`{dirty}.")
    return "Machine: not recorded (no run finished)."


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def train_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| run | status | iterations | train s | img/s | stopped by | VOC07 mAP | VOC07 AP per class | "
             "COCO AP50 | test ms/img | model ms/img |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in runs:
        n = run_numbers(e)
        per_class = ", ".join(f"{c} {_fmt(a, 3)}" for c, a in n["ap07"].items()) if len(n["ap07"]) > 1 else "–"
        lines.append(f"| {e['name']} | {e['status']} | {_fmt(n['iteration'])} | {_fmt(n['train_seconds'])} | "
                     f"{_fmt(n['img_s'])} | {_fmt(n['stopped_by'])} | {_fmt(n['map07'], 3)} | {_esc(per_class)} | "
                     f"{_fmt(n['ap50'], 3)} | {_fmt(n['test_ms'])} | {_fmt(n['model_ms'])} |")
    return lines


def bench_table(runs: Sequence[dict[str, Any]]) -> list[str]:
    """tools/benchmark.py results: one row per run, model and measurement."""
    lines = ["| run | status | model | measurement | median ms | img/s | peak MB |", "|---|---|---|---|---|---|---|"]
    for e in runs:
        res = _get(e, "result", "results") or {}
        if not res:
            lines.append(f"| {e['name']} | {e['status']} | – | – | – | – | – |")
        for model, ms in res.items():
            for key in ("train", "infer_latency", "infer_throughput"):
                m = ms.get(key) if isinstance(ms, dict) else None
                if m:
                    lines.append(f"| {e['name']} | {e['status']} | {model} | {key} (b{m.get('batch_size')}) | "
                                 f"{_fmt(_get(m, 'total_ms', 'median'))} | {_fmt(m.get('images_per_s'))} | "
                                 f"{_fmt(m.get('peak_memory_mb'), 0)} |")
        ratios = _get(e, "result", "ratios") or {}
        if ratios:
            lines.append(f"| {e['name']} | ratios | detkit / torchvision | "
                         + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()) + " | | | |")
    return lines


def speedups(runs: Sequence[dict[str, Any]]) -> list[str]:
    """SPPNet's test-time speed-up over R-CNN for run pairs named ``X-rcnn-Y`` / ``X-sppnet-Y``
    (model ms/img, measured in the same call on the same machine)."""
    by_name = {e["name"]: run_numbers(e)["model_ms"] for e in runs}
    lines = [f"- `{n.replace('-rcnn-', '-sppnet-')}` is {ms / by_name[n.replace('-rcnn-', '-sppnet-')]:.1f}x "
             f"faster than `{n}` at test ({ms:.1f} vs {by_name[n.replace('-rcnn-', '-sppnet-')]:.1f} ms/img, "
             "proposal search excluded)"
             for n, ms in by_name.items()
             if "-rcnn-" in n and ms and by_name.get(n.replace("-rcnn-", "-sppnet-"))]
    return ["SPPNet over R-CNN:", "", *lines, ""] if lines else []


def group_markdown(group: dict[str, Any]) -> str:
    """The generated text of one group: tables, machine + commit line, the exact commands."""
    runs = group["runs"]
    train = [e for e in runs if e.get("kind", "train") == "train"]
    bench = [e for e in runs if e.get("kind") == "benchmark"]
    out = [f"Generated by `tools/experiments.py report` from group `{group['group']}` of "
           f"`{group.get('suite', '?')}`. {_machine_line(group)}", ""]
    if train:
        out += train_table(train) + [""]
    if bench:
        out += bench_table(bench) + [""]
    out += speedups(runs)
    notes = [f"- `{e['name']}`: {_esc(e['notes'])}" for e in runs if e.get("notes")]
    budgets = [f"- `{e['name']}` ({e['status']}, budget {_fmt(e.get('budget_s'), 0)} s, took "
               f"{_fmt(e.get('seconds'))} s): `{e['command']}`" for e in runs]
    out += ["Commands (from the repository root):", "", *budgets]
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out) + "\n"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the part between ``<!-- experiments:name -->`` and its closing marker set to
    ``body``; appended as a new section when the markers are absent."""
    open_, close = f"<!-- experiments:{name} -->", f"<!-- /experiments:{name} -->"
    pattern = re.compile(re.escape(open_) + r".*?" + re.escape(close), re.S)
    block = f"{open_}\n{body.rstrip()}\n{close}"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + f"\n\n## Experiments: {name}\n\n{block}\n"


def write_report(groups: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Rewrite each group's marked section of ``path`` (created if missing)."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Results\n"
    for g in groups:
        text = replace_section(text, g["group"], group_markdown(g))
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def speed_accuracy_points(groups: Sequence[dict[str, Any]], data: str = "bccd") -> list[tuple[str, float, float]]:
    """``(run, test ms/img, VOC07 mAP)`` of the finished train runs on ``data`` (the metrics'
    ``data`` name starts with it). Time: the model call alone where measured (comparable across
    methods: data loading differs between the pipelines), else the whole test pass."""
    pts = []
    for g in groups:
        for e in g["runs"]:
            n = run_numbers(e)
            ms = n["model_ms"] if n["model_ms"] is not None else n["test_ms"]
            if e.get("kind", "train") == "train" and str(n["data"] or "").startswith(data) and \
                    ms and n["map07"] is not None:
                pts.append((e["name"], ms, n["map07"]))
    return pts


def plot_speed_accuracy(groups: Sequence[dict[str, Any]], path: str | os.PathLike, data: str = "bccd") -> Path:
    """PNG: test ms/img (log x) against VOC07 mAP, one labelled point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = speed_accuracy_points(groups, data)
    if not pts:
        raise ReportError(f"no finished train run on {data!r} with a test time and a VOC07 mAP to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, ms, m in pts:
        ax.scatter([ms], [m], s=28)
        ax.annotate(name, (ms, m), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("test time per image, model call (ms, log scale)")
    ax.set_ylabel("VOC07 mAP (test)")
    ax.set_title(f"speed vs accuracy on {data}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
