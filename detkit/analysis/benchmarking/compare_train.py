"""Accuracy at equal training time: detkit's detector against torchvision's, side by side.

``compare_train`` trains, for each seed, detkit's detector as the run config describes it, any
number of detkit *variants* (the same config plus a few overrides: an ablation, or Fast R-CNN on
the same data), and torchvision's ``FasterRCNN`` built around the same network
(:func:`detkit.analysis.benchmarking.torchvision_compare.build_training_twin`). Every run is an ordinary
``train_from_config`` run: the same data, loader, augmentation, training loop, wall-clock budget
(``solver.max_time_s``) and final test pass scored by detkit's evaluator; only the model differs.
Runs go one after the other on the same machine, seed by seed, so a slow spell of the machine
falls on every detector alike.

Each run writes its own folder under ``work``; a run whose ``metrics.json`` exists is read, not
trained again, so an interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "detkit-compare-train/1"
TORCHVISION = "torchvision"
# torchvision's twin runs as its users run it: fp32, default memory format, uncompiled.
TWIN_OVERRIDES = ("amp=none", "channels_last=false", "compile.enabled=false")


@dataclass(frozen=True)
class Side:
    """One detector of the comparison: a name, extra overrides, and whether it is torchvision's twin."""

    name: str
    overrides: tuple[str, ...] = ()
    twin: bool = False
    twin_settings: Mapping[str, Any] = field(default_factory=dict)


def parse_variant(text: str) -> Side:
    """``"NAME=KEY=VALUE KEY=VALUE ..."`` -> a detkit :class:`Side` with those overrides."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or "." in name or "/" in name:
        raise ValueError(f"variant {text!r}: expected NAME=OVERRIDES, e.g. 'align=method.model.roi_pool_mode=align'")
    return Side(name=name.strip(), overrides=tuple(rest.split()))


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The comparison's row of a finished run: its ``metrics.json`` boiled down."""
    m = json.loads((run_dir / "metrics.json").read_text())
    coco = m.get("coco") or {}
    return {
        "voc07": m["voc07"]["mAP"], "voc12": m["voc12"]["mAP"],
        "voc07_per_class": m["voc07"].get("per_class"),
        "coco_ap": coco.get("AP"), "coco_ap50": coco.get("AP50"),
        "iterations": m.get("iteration"), "train_seconds": m.get("train_seconds"),
        "train_images_per_second": m.get("train_images_per_second"),
        "test_ms_per_image": 1000.0 * m["test_seconds_per_image"] if m.get("test_seconds_per_image") else None,
        "machine": m.get("machine"), "git": m.get("git"),
    }


def compare_train(overrides: Sequence[str], *, budget_s: float, seeds: Sequence[int], work: str | Path,
                  sides: Sequence[Side], echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and test every side for every seed (module docstring); returns the JSON-ready result.

    Args:
        overrides: Hydra overrides of ``configs/train.yaml`` shared by every side (data, preset, ...).
        budget_s: training seconds per run (``solver.max_time_s``).
        seeds: one run per side per seed (``seed=``: weights, data order, augmentation).
        work: parent of the run folders ``<work>/<side>-seed<seed>``.
        sides: the detectors; at most one may be torchvision's twin.
    """
    from detkit.analysis.benchmarking.torchvision_compare import build_training_twin, setting_differences
    from detkit.engine.config import compose_run_config
    from detkit.engine.run import train_from_config

    if not budget_s > 0:
        raise ValueError(f"budget_s must be positive seconds, got {budget_s}")
    if not seeds or not sides:
        raise ValueError("compare_train needs at least one seed and one side")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must differ, got {names}")
    work = Path(work)
    shared = [*overrides, f"solver.max_time_s={budget_s}"]
    base = compose_run_config(shared)
    runs: list[dict[str, Any]] = []
    differences = None
    for seed in seeds:
        for side in sides:
            run_dir = work / f"{side.name}-seed{seed}"
            # resume=true: a run interrupted earlier continues (under the same config only: run_guard)
            conf = compose_run_config([*shared, *side.overrides, f"seed={seed}", f"run_dir={run_dir}", "resume=true"])
            if side.twin:
                _require_joint_faster(conf)
                if differences is None:
                    differences = setting_differences(_detkit_model(conf), side.twin_settings)
            if (run_dir / "metrics.json").is_file():
                echo(f"{side.name} seed {seed}: finished earlier, reading {run_dir / 'metrics.json'}")
            else:
                echo(f"{side.name} seed {seed}: training for {budget_s:g} s into {run_dir}")
                wrap = (lambda m, s=side: build_training_twin(m, s.twin_settings)) if side.twin else None
                with _log_file(run_dir / "train.log"):
                    train_from_config(conf, wrap_model=wrap)
            row = {"side": side.name, "seed": int(seed), "overrides": list(side.overrides), "run_dir": str(run_dir),
                   **run_metrics(run_dir)}
            runs.append(row)
            echo(f"{side.name} seed {seed}: VOC07 mAP {_fmt(row['voc07'])} after {row['iterations']} iterations")
    return {
        "schema": SCHEMA, "overrides": list(overrides), "budget_s": float(budget_s), "seeds": [int(s) for s in seeds],
        "data": base["data"].get("name"), "method": base["method"].get("name"),
        "sides": [{"name": s.name, "overrides": list(s.overrides), "torchvision_twin": s.twin,
                   "twin_settings": dict(s.twin_settings)} for s in sides],
        "settings_that_differ": differences, "summary": summarize(runs, names), "runs": runs,
    }


@contextlib.contextmanager
def _log_file(path: Path):
    """detkit's log records of one run also go to ``path`` (what tools/train.py's Hydra app does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("detkit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _require_joint_faster(conf: dict[str, Any]) -> None:
    method = conf["method"]
    if method.get("name") != "faster_rcnn" or method.get("training", "joint") != "joint":
        raise ValueError(f"torchvision's twin is a Faster R-CNN trained jointly; the config's method is "
                         f"{method.get('name')!r} ({method.get('training', 'joint')} training)")


def _detkit_model(conf: dict[str, Any]):
    """The detector ``conf`` describes, as a run would build it (anchors fitted where ``auto``)."""
    import copy

    from detkit.engine.checkpoint import build_model
    from detkit.engine.setup import fit_auto_anchors, load_split, prepare_data

    conf = copy.deepcopy(conf)
    prepare_data(conf["data"])
    train = load_split(conf["data"], "train")
    fit_auto_anchors(conf, train)
    return build_model(conf, len(train.class_names))


def summarize(runs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per side: mean and sample standard deviation of VOC07 mAP over seeds, and mean costs."""
    out = {}
    for name in names:
        rows = [r for r in runs if r["side"] == name]
        if not rows:
            continue
        m07 = [r["voc07"] or 0.0 for r in rows]
        out[name] = {
            "seeds": [r["seed"] for r in rows], "voc07": m07,
            "voc07_mean": statistics.fmean(m07), "voc07_sd": statistics.stdev(m07) if len(m07) > 1 else None,
            **{f"{k}_mean": _mean([r[k] for r in rows]) for k in
               ("voc12", "coco_ap", "coco_ap50", "iterations", "train_images_per_second", "test_ms_per_image")},
        }
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as GitHub markdown: one row per side, then the settings that differ."""
    head = ("| detector | VOC07 mAP, mean ± sd (per seed) | VOC12 mAP | COCO AP | COCO AP50 | iterations "
            "| train img/s | test ms/img |")
    # "up to": a run also ends at solver.max_iters, which the shared overrides may set (see iterations)
    lines = [f"{result['data']}, up to {result['budget_s']:g} s of training per run, seeds "
             f"{', '.join(map(str, result['seeds']))}; every run: `{' '.join(result['overrides'])}`", "", head,
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for side in result["sides"]:
        s = result["summary"].get(side["name"])
        if s is None:
            continue
        sd = f" ± {s['voc07_sd']:.3f}" if s["voc07_sd"] is not None else ""
        each = ", ".join(f"{v:.3f}" for v in s["voc07"])
        label = side["name"] + (f" (`{' '.join(side['overrides'])}`)" if side["overrides"] else "")
        lines.append(f"| {label} | **{s['voc07_mean']:.3f}**{sd} ({each}) | {_fmt(s['voc12_mean'])} | "
                     f"{_fmt(s['coco_ap_mean'])} | {_fmt(s['coco_ap50_mean'])} | {_fmt(s['iterations_mean'], 0)} | "
                     f"{_fmt(s['train_images_per_second_mean'], 2)} | {_fmt(s['test_ms_per_image_mean'], 0)} |")
    if result.get("settings_that_differ"):
        lines += ["", "Where torchvision's twin differs from detkit's detector (same trunk, region head, data, "
                  "loop and budget otherwise):", "", "| setting | detkit | torchvision |", "|---|---|---|"]
        lines += [f"| {d['setting']} | {_show(d['detkit'])} | {_show(d['torchvision'])} |"
                  for d in result["settings_that_differ"]]
    return "\n".join(lines) + "\n"
