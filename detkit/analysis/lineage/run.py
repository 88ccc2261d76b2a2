"""A lineage run: train (or take) every method on one data set, measure them, write the report.

``run_lineage`` does, in order, resuming whatever an earlier call in the same folder finished:

1. the selective search caches R-CNN, SPPNet and Fast R-CNN read (computed once, in parallel);
2. each method into ``<out>/<method>/``: ``detkit train`` as a subprocess (the experiment suite
   runner, :mod:`detkit.analysis.suite.experiments`: a finished run is skipped, an interrupted one
   resumes from its ``last.pt``), or, for a checkpoint given with ``checkpoints``, that checkpoint
   tested on the same split with the same evaluator (``metrics.json``, ``detections.json``);
3. test time by phase on the report's images and the proposal recall curves
   (:mod:`detkit.analysis.lineage.measure`), kept in ``<out>/<method>/timing.json`` and
   ``<out>/proposal_recall.json`` until the checkpoint they measured changes;
4. ``<out>/lineage.json`` (everything the page shows) and ``<out>/index.html``
   (:mod:`detkit.analysis.lineage.report`).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from detkit.analysis.lineage.steps import METHODS, step, train_overrides
from detkit.engine.config import compose_run_config

SCHEMA = "detkit-lineage/1"
COMMON_TRAIN = ["resume=true", "progress=false", "tensorboard=false"]


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _cached(path: Path, key: Any) -> Any | None:
    """The ``value`` of a JSON cache file made with ``key``, or ``None``."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("value") if doc.get("key") == key else None


def _finite(obj: Any) -> Any:
    """NaN (a recall or AP with no ground truth) -> ``None``, so the JSON stays standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _write(path: Path, obj: Any) -> None:
    from detkit.utils.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(_finite(obj), indent=1, allow_nan=False) + "\n")


def parse_assignments(items: Sequence[str], what: str) -> dict[str, str]:
    """``["rcnn=120", ...]`` -> ``{"rcnn": "120"}``, methods checked (``what`` names the option)."""
    out = {}
    for item in items:
        method, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"lineage: {what} takes METHOD=VALUE, got {item!r}")
        step(method)
        out[method] = value
    return out


def evaluate_checkpoint(checkpoint: Path, conf: dict[str, Any], run_dir: Path, *, progress: bool = False) -> None:
    """Test a given checkpoint on the lineage's test split: ``run_dir/metrics.json`` and
    ``detections.json``, as a finished training run of the lineage would have them."""
    from detkit.data.dataset import DetectionDataset
    from detkit.data.transforms import eval_transforms
    from detkit.engine.checkpoint import model_from_checkpoint
    from detkit.engine.distributed import resolve_device
    from detkit.engine.precision import CONCRETE_AMP, resolve_amp
    from detkit.engine.report import test_and_report
    from detkit.engine.setup import load_split, split_proposals

    model, ckpt = model_from_checkpoint(checkpoint)
    stored = ckpt["config"]
    if stored.get("method", {}).get("name") != conf["method"]["name"]:
        raise ValueError(f"lineage: {checkpoint} is a {stored.get('method', {}).get('name')!r} checkpoint, "
                         f"given for {conf['method']['name']!r}")
    test_data = load_split(conf["data"], "test", ckpt["class_names"])
    if test_data is None:
        raise ValueError(f"lineage: the data config {conf['data'].get('name')!r} has no test split")
    test_set = DetectionDataset(test_data, eval_transforms((stored.get("data") or {}).get("transforms")),
                                **split_proposals(conf, test_data, "test"))
    device = resolve_device(str(conf.get("device", "auto")))
    facts: dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_stamp": [str(checkpoint), *_stamp(Path(checkpoint))]}
    amp = str(stored.get("amp", "none"))
    beside = Path(checkpoint).with_name("metrics.json")
    if beside.is_file():  # its own training run's facts (time, iterations), when it has them
        try:
            theirs = json.loads(beside.read_text())
            facts.update({k: v for k, v in theirs.items()
                          if k in ("train_seconds", "iteration", "stages", "train_images_per_second")})
            if theirs.get("test_amp") in CONCRETE_AMP:
                # The precision its own test used ("auto" is decided by timing, which may differ
                # from process to process): the same weights then give the same scores.
                amp = theirs["test_amp"]
        except (OSError, ValueError, AttributeError):
            pass
    run_dir.mkdir(parents=True, exist_ok=True)
    test_and_report(model.to(device), test_data, test_set, run_dir=run_dir, device=device, test_cfg=conf["test"],
                    facts=facts, amp=resolve_amp(amp, device), progress=progress)


def pick_images(data, count: int) -> list[int]:
    """``count`` test images spread evenly over the split (the first and the last included), among
    those with ground truth; the same for every method."""
    with_gt = [r for r in data.records if len(r.boxes)] or list(data.records)
    if count <= 0:
        raise ValueError(f"lineage: the number of report images must be positive, got {count}")
    k = min(count, len(with_gt))
    idx = sorted({round(i * (len(with_gt) - 1) / max(k - 1, 1)) for i in range(k)})
    return [with_gt[i].image_id for i in idx]


def _check_plan(out: Path, plan: dict[str, Any]) -> None:
    """Refuse to continue a lineage folder made with other shared settings (budgets compared for the
    methods both runs have): its finished methods would not be trained again, and the page would
    mix two set-ups. Written on the first call."""
    path = out / "lineage_plan.json"
    if not path.is_file():
        _write(path, plan)
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"lineage: {path} is unreadable ({e}); delete it or use another --out") from None
    diffs = [k for k in ("overrides", "proposals") if old.get(k) != plan[k]]
    budgets = [m for m, b in plan["budgets"].items() if m in (old.get("budgets") or {}) and old["budgets"][m] != b]
    diffs += [f"budget of {', '.join(budgets)}"] if budgets else []
    if diffs:
        raise ValueError(f"lineage: {out} was made with other settings ({', '.join(diffs)} differ: {path}); "
                         "use another --out, or delete the folder to start over")
    _write(path, {**plan, "budgets": {**old.get("budgets", {}), **plan["budgets"]}})


def _search_spec(conf: dict[str, Any]) -> dict[str, Any]:
    from detkit.proposals.source import check_proposals_spec

    return check_proposals_spec(conf["data"].get("proposals"))


def _given_boxes(spec: dict[str, Any], data, *, cap: bool = True) -> tuple[dict, dict | None]:
    """Test-split boxes as training read them, and the search seconds of each image (a proposals
    file has none)."""
    from detkit.proposals.cache import load_proposals
    from detkit.proposals.source import load_configured_proposals, search_options

    if spec.get("file") is not None:
        return load_configured_proposals(spec if cap else {**spec, "max_proposals": None}, data, split="test"), None
    return load_proposals(spec["cache_dir"], data, max_proposals=spec.get("max_proposals") if cap else None,
                          with_seconds=True, **search_options(spec))


def _machine_key(device) -> dict[str, Any]:
    from detkit.utils.provenance import machine_info

    info = machine_info(device)
    return {k: info.get(k) for k in ("cpu", "gpu", "torch_threads", "torch")}


def run_lineage(overrides: Sequence[str], *, out: str | os.PathLike, methods: Sequence[str] = METHODS,
                budget_s: float = 240.0, budgets: Mapping[str, float] | None = None, proposals: int | None = 300,
                checkpoints: Mapping[str, str | os.PathLike] | None = None, num_images: int = 4,
                workers: int = 2, command: str | None = None, python: str = sys.executable,
                echo: Callable[[str], None] = print) -> Path:
    """Train or take every method, measure, and write ``<out>/index.html`` (module docstring).

    Args:
        overrides: ``configs/train.yaml`` overrides shared by every method (data, backbone, device, ...).
        out: the lineage folder.
        methods: which steps, in lineage order.
        budget_s: training seconds per method; ``budgets`` per method replace it.
        proposals: selective search boxes per image of R-CNN, SPPNet and Fast R-CNN.
        checkpoints: method -> a trained checkpoint to test instead of training.
        num_images: test images shown with every method's detections.
        workers: selective search processes.
        command: the command line to print on the page (default: this process's).

    Returns the page's path. A method whose training, testing or timing fails is reported on the
    page (and in ``lineage.json``'s ``failed``) and the others are shown.
    """
    from detkit.analysis.suite.experiments import Run, precompute_proposals, run_groups
    from detkit.engine.checkpoint import load_checkpoint

    out = Path(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"lineage: methods must be among {', '.join(METHODS)}, got {list(methods)}")
    methods = [m for m in METHODS if m in set(methods)]  # lineage order
    extra = sorted(set(budgets or {}) - set(methods))
    if extra:
        raise ValueError(f"lineage: a budget is given for {', '.join(extra)}, not among the methods run")
    budgets = {m: float((budgets or {}).get(m, budget_s)) for m in methods}
    if not all(math.isfinite(b) and b > 0 for b in budgets.values()):
        raise ValueError(f"lineage: budgets must be positive numbers of seconds, got {budgets}")
    checkpoints = {m: Path(p) for m, p in (checkpoints or {}).items()}
    for m, p in checkpoints.items():
        if m not in methods:
            raise ValueError(f"lineage: a checkpoint is given for {m}, which is not among the methods run")
        if not p.is_file():
            raise FileNotFoundError(f"lineage: the checkpoint given for {m} does not exist: {p}")
        given = (load_checkpoint(p).get("config") or {}).get("method", {}).get("name")
        if given != m:
            raise ValueError(f"lineage: {p} is a {given!r} checkpoint, given for {m!r}")
    step_overrides = {m: train_overrides(m, overrides, budget_s=budgets[m], proposals=proposals) for m in methods}
    confs = {m: compose_run_config(step_overrides[m]) for m in methods}
    if not all((c.get("test") or {}).get("enabled", True) for c in confs.values()):
        raise ValueError("lineage: test.enabled=false leaves nothing to compare; the lineage tests every method")
    for m in methods:
        if m in checkpoints and (out / m / "last.pt").is_file():
            raise ValueError(f"lineage: {m} was trained in {out / m}; its test files stay as they are: "
                             "use another --out for the given checkpoint")
        if m not in checkpoints and (out / m / "metrics.json").is_file() and not (out / m / "last.pt").is_file():
            raise ValueError(f"lineage: {out / m} holds a tested --checkpoint, not a training run; give the "
                             "checkpoint again, or use another --out to train the method")
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, {"overrides": list(overrides), "proposals": proposals, "budgets": budgets})
    runs = [Run(name=m, kind="train", group="lineage", args=step_overrides[m], budget_s=budgets[m])
            for m in methods if m not in checkpoints]
    suite = {"path": f"lineage {out}", "common": {"train": COMMON_TRAIN, "benchmark": []},
             "groups": {"lineage": runs}}

    # 1-2: proposals, then every method trained or tested
    search_methods = [m for m in methods if step(m).search]
    if search_methods:
        echo(f"selective search for {', '.join(search_methods)} (cached; computed once)")
        precompute_proposals({**suite, "groups": {"lineage": [Run(name=m, kind="train", group="lineage",
                                                                  args=step_overrides[m]) for m in search_methods]}},
                             workers=workers, echo=echo)
    results: dict[str, Any] = {}
    if runs:
        results = run_groups(suite, ["lineage"], work=out, results=out / "runs", python=python,
                             cwd=os.getcwd(), echo=echo)["lineage"]
    failed = {e["name"]: f"training {e['status']} (see {out / e['name'] / 'run.log'})"
              for e in results.get("runs", []) if e["status"] not in ("ok", "done")}
    for m, ckpt in checkpoints.items():
        try:
            metrics = json.loads((out / m / "metrics.json").read_text()) if (out / m / "metrics.json").is_file() else {}
            if metrics.get("checkpoint_stamp") != [str(ckpt), *_stamp(ckpt)]:
                echo(f"{m}: testing the given checkpoint {ckpt}")
                evaluate_checkpoint(ckpt, confs[m], out / m)
        except (ValueError, OSError, RuntimeError) as e:
            failed[m] = f"testing {ckpt} failed: {e}"
    ready = [m for m in methods if m not in failed and (out / m / "metrics.json").is_file()]
    if not ready:
        raise RuntimeError(f"lineage: no method finished ({'; '.join(f'{m}: {r}' for m, r in failed.items())})")
    for m, reason in failed.items():
        echo(f"{m}: left out of the page: {reason}")
    ckpt_of = {m: Path(checkpoints.get(m, out / m / "last.pt")) for m in ready}
    return _measure_and_report(out, ready, ckpt_of=ckpt_of, confs=confs, step_overrides=step_overrides,
                               budgets=budgets, given=set(checkpoints), failed=failed, num_images=num_images,
                               doc={"overrides": list(overrides),
                                    "command": command or shlex.join(["detkit", "lineage", *sys.argv[1:]]),
                                    "train_commands": {e["name"]: e.get("command") for e in results.get("runs", [])}},
                               echo=echo)


def _measure_and_report(out: Path, ready: list[str], *, ckpt_of: dict[str, Path], confs: dict, step_overrides: dict,
                        budgets: dict, given: set[str], failed: dict[str, str], num_images: int, doc: dict,
                        echo: Callable[[str], None]) -> Path:
    """Steps 3 and 4 of the module docstring for the methods in ``ready``."""
    from detkit.analysis.lineage.measure import proposal_recall_curves, time_phases
    from detkit.analysis.lineage.report import write_report
    from detkit.data.transforms import eval_transforms
    from detkit.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from detkit.engine.distributed import resolve_device
    from detkit.engine.precision import resolve_amp
    from detkit.engine.setup import load_split
    from detkit.utils.provenance import run_facts

    class_names = load_checkpoint(ckpt_of[ready[0]])["class_names"]
    test_data = load_split(confs[ready[0]]["data"], "test", class_names)
    shown = pick_images(test_data, num_images)
    device = resolve_device(str(confs[ready[0]].get("device", "auto")))
    entries, search_spec = [], None
    for m in ready:
        spec = _search_spec(confs[m]) if step(m).search else None
        search_spec = search_spec or spec
        key = {"checkpoint": _stamp(ckpt_of[m]), "images": shown, "device": str(device), "proposals": spec,
               "machine": _machine_key(device)}
        try:
            timing = _cached(out / m / "timing.json", key)
            if timing is None:
                echo(f"{m}: timing the test pass on {len(shown)} images")
                props, seconds = _given_boxes(spec, test_data) if spec else (None, None)
                model, ckpt = model_from_checkpoint(ckpt_of[m])
                stored = ckpt["config"]
                timing = time_phases(model.to(device), eval_transforms((stored.get("data") or {}).get("transforms")),
                                     test_data, shown, device=device,
                                     amp=resolve_amp(str(stored.get("amp", "none")), device),
                                     proposals=props, search_seconds=seconds)
                _write(out / m / "timing.json", {"key": key, "value": timing})
            metrics = json.loads((out / m / "metrics.json").read_text())
        except (ValueError, OSError, RuntimeError) as e:
            failed[m] = f"timing failed: {e}"
            echo(f"{m}: left out of the page: {failed[m]}")
            continue
        s = step(m)
        entries.append({"method": m, "title": s.title, "paper": s.paper, "idea": s.idea,
                        "checkpoint": str(ckpt_of[m]), "given": m in given, "budget_s": budgets[m],
                        "overrides": step_overrides[m], "metrics": metrics, "timing": timing})
    if not entries:
        raise RuntimeError(f"lineage: no method could be measured ({'; '.join(f'{m}: {r}' for m, r in failed.items())})")
    rpn = ckpt_of.get("faster_rcnn") if any(e["method"] == "faster_rcnn" for e in entries) else None
    search_spec = search_spec if search_spec and search_spec.get("file") is None else None
    recall = None
    if rpn is not None or search_spec is not None:
        key = {"rpn": _stamp(rpn) if rpn else None, "search": search_spec and {**search_spec, "max_proposals": None}}
        recall = _cached(out / "proposal_recall.json", key)
        if recall is None:
            echo("proposal recall: selective search and the RPN against the number of proposals")
            search = _given_boxes(search_spec, test_data, cap=False)[0] if search_spec else None
            recall = proposal_recall_curves(test_data, search=search, device=str(device), rpn_checkpoint=rpn)
            _write(out / "proposal_recall.json", {"key": key, "value": recall})
    doc = {"schema": SCHEMA, "data": test_data.name, "classes": list(test_data.class_names),
           "num_test_images": len(test_data), "shown_images": shown, **doc, "failed": failed,
           "methods": entries, "proposal_recall": recall, **run_facts(device)}
    _write(out / "lineage.json", doc)
    page = write_report(doc, test_data, out)
    echo(f"report: {page}")
    return page
