"""Text output of a :class:`~detkit.analysis.architecture.summary.Summary`: aligned tables and GitHub markdown.

One table per part (trunk and region head for a Backbone, else the model), with columns layer,
type, output (C×H×W), params, trainable, MACs, stride, RF; totals under each. A value equal on
every axis prints once (``16``), else per axis (``16×8``); "—" means no spatial grid (flattened or
global), "?" unknown, and a module never called shows "not called".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: summary.py imports this module
    from detkit.analysis.architecture.summary import LayerRow, Summary

__all__ = ["format_table", "to_markdown"]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _axes(v: tuple[float, ...] | None, none: str) -> str:
    if v is None:
        return none
    return _num(v[0]) if len(set(v)) == 1 else "×".join(_num(a) for a in v)


def _shape(s: tuple[int, ...] | None) -> str:
    return "×".join(map(str, s)) if s is not None else "not called"


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


_HEADER = ("layer", "type", "output (C×H×W)", "params", "trainable", "MACs", "stride", "RF")


def _cells(r: LayerRow) -> tuple[str, ...]:
    unknown = "?" if r.called else ""
    stride = _axes(r.stride, "—" if r.rf is not None else unknown)
    return (r.name, r.type, _shape(r.output_shape), f"{r.params:,}", f"{r.trainable:,}",
            f"{r.macs:,}", stride, _axes(r.rf, unknown))


def _totals(s: Summary) -> list[str]:
    frozen = s.total_params - s.trainable_params
    lines = [
        f"input {_shape(s.input_shape)} -> output {_shape(s.output_shape)}",
        f"parameters: {s.total_params:,} ({_human(s.total_params)}); trainable {s.trainable_params:,}, "
        f"frozen {frozen:,}",
        f"multiply-adds: {s.total_macs:,} ({_human(s.total_macs)})",
    ]
    if not s.parts:
        unit = "RoI bins" if s.name == "region_head" else "px"
        lines.append(f"output stride {_axes(s.output_stride, '—' if s.output_rf else '?')}, "
                     f"receptive field {_axes(s.output_rf, '?')} {unit}")
    return lines


def _sections(s: Summary) -> list[tuple[str, Summary]]:
    return [(f"{p.name}", p) for p in s.parts] if s.parts else [(s.name, s)]


def format_table(summary: Summary) -> str:
    """Aligned text: a table per part (trunk, region head for a Backbone), totals under each."""
    out: list[str] = []
    for title, s in _sections(summary):
        rows = [_HEADER, *(_cells(r) for r in s.rows)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
        right = {3, 4, 5, 6, 7}
        fmt = [(c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(rows[0], widths))]
        out += [f"== {title} ==", "  ".join(fmt).rstrip(), "  ".join("-" * w for w in widths)]
        for row in rows[1:]:
            out.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        out += ["  ".join("-" * w for w in widths), *_totals(s), ""]
    if summary.parts:
        out += [f"== {summary.name}: all parts ==", *_totals(summary), ""]
    return "\n".join(out).rstrip() + "\n"


def to_markdown(summary: Summary) -> str:
    """The same tables as GitHub markdown (numbers right-aligned), totals as a list."""
    out: list[str] = []
    for title, s in _sections(summary):
        out += [f"**{title}**", "", "| " + " | ".join(_HEADER) + " |",
                "|" + "|".join(["---"] * 3 + ["---:"] * 5) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in s.rows]
        out += ["", *(f"- {line}" for line in _totals(s)), ""]
    if summary.parts:
        out += [f"**{summary.name}: all parts**", "", *(f"- {line}" for line in _totals(summary)), ""]
    return "\n".join(out).rstrip() + "\n"
