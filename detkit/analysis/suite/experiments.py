"""Experiment suites: named groups of training and benchmark runs, run as subprocesses, each
group's results kept in one compact JSON that is rewritten after every run.

A suite is a plain YAML file (OmegaConf, interpolation allowed; no Hydra)::

    vars:                      # anything, for ${vars.x} interpolation
      bccd: [data=bccd, data.root=.data/bccd]
    common:                    # prepended to every run of that kind
      train: [progress=false]
      benchmark: [--device, auto]
    groups:
      headline:
        - name: bccd-faster-vgg16bn     # unique in the suite; the run folder <work>/<name>
          kind: train                   # train: detkit train <overrides> run_dir=<work>/<name>
          budget_s: 300                 # declared wall-clock bound (start-up + training + test)
          overrides: ["${vars.bccd}", backbone=vgg16, solver.max_time_s=180]
          notes: the issue's headline run
        - {name: bench-vgg16, kind: benchmark, budget_s: 120, args: [--backbone, vgg16]}
          # benchmark: detkit benchmark <args> --out <work>/<name>/benchmark.json

``init_from: <run name>`` (train runs) starts a run from another run's ``last.pt`` (copied into
its folder; the suite's train commands carry ``resume=true``), so a run that only changes test-time
settings (OverFeat's ``merge=nms``) re-evaluates the same weights without training again.

An element of ``overrides``/``args`` may be a list (an interpolated ``vars`` entry): it is spliced
in. A run is *finished* when its ``metrics.json`` (train) or ``benchmark.json`` exists; finished
runs are skipped, so a second call continues where a killed one stopped.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkit.engine.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[3]
KINDS = ("train", "benchmark")
RESULT_FILE = {"train": "metrics.json", "benchmark": "benchmark.json"}
SCHEMA = "detkit-experiments/1"


class SuiteError(ValueError):
    """A suite file that cannot be read or does not follow the layout (names the file)."""


@dataclass
class Run:
    """One run of a suite (module docstring)."""

    name: str
    kind: str
    group: str
    args: list[str] = field(default_factory=list)
    budget_s: float | None = None
    notes: str = ""
    init_from: str | None = None

    def result_path(self, work: Path) -> Path:
        return Path(work) / self.name / RESULT_FILE[self.kind]

    def command(self, work: Path, common: Sequence[str] = (), python: str = sys.executable) -> list[str]:
        """The subprocess command line (run from the repository root)."""
        out = Path(work) / self.name
        if self.kind == "train":
            return [python, "-m", "detkit", "train", *common, *self.args, f"run_dir={out}"]
        return [python, "-m", "detkit", "benchmark", *common, *self.args, "--out", str(out / RESULT_FILE["benchmark"])]


def _flatten(items: Any, where: str) -> list[str]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise SuiteError(f"{where} must be a list, got {items!r}")
    out: list[str] = []
    for x in items:
        if isinstance(x, list):
            out += _flatten(x, where)
        elif isinstance(x, (str, int, float, bool)):
            out.append(str(x).lower() if isinstance(x, bool) else str(x))
        else:
            raise SuiteError(f"{where}: entries must be strings (or lists of them), got {x!r}")
    return out


def load_suite(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "common": {kind: [str]}, "groups": {name: [Run]}}`` of a suite file.

    Raises:
        SuiteError: unreadable YAML, a bad interpolation, an unknown kind, a missing or repeated name.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (OSError, OmegaConfBaseException) as e:
        raise SuiteError(f"{path}: cannot read the suite: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), dict) or not raw["groups"]:
        raise SuiteError(f"{path}: a suite needs a non-empty 'groups' mapping (group name -> list of runs)")
    common = {k: _flatten((raw.get("common") or {}).get(k), f"{path}: common.{k}") for k in KINDS}
    groups: dict[str, list[Run]] = {}
    seen: set[str] = set()
    for gname, runs in raw["groups"].items():
        if not isinstance(runs, list) or not runs:
            raise SuiteError(f"{path}: group {gname!r} must be a non-empty list of runs")
        groups[gname] = []
        for i, r in enumerate(runs):
            where = f"{path}: groups.{gname}[{i}]"
            if not isinstance(r, dict) or not r.get("name"):
                raise SuiteError(f"{where}: each run needs a 'name'")
            if r.get("kind", "train") not in KINDS:
                raise SuiteError(f"{where}: kind must be one of {KINDS}, got {r.get('kind')!r}")
            unknown = set(r) - {"name", "kind", "args", "overrides", "budget_s", "notes", "init_from"}
            if unknown:
                raise SuiteError(f"{where}: unknown keys {sorted(unknown)}")
            name = str(r["name"])
            if name in seen or "/" in name:
                raise SuiteError(f"{where}: run name {name!r} is repeated or contains '/'")
            seen.add(name)
            args = _flatten(r.get("overrides"), where) + _flatten(r.get("args"), where)
            budget = r.get("budget_s")
            groups[gname].append(Run(name=name, kind=r.get("kind", "train"), group=gname, args=args,
                                     budget_s=float(budget) if budget is not None else None,
                                     notes=str(r.get("notes") or "").strip(), init_from=r.get("init_from")))
    names = {r.name for runs in groups.values() for r in runs}
    for r in (r for runs in groups.values() for r in runs if r.init_from):
        if r.init_from not in names or r.kind != "train":
            raise SuiteError(f"{path}: run {r.name!r}: init_from {r.init_from!r} is not a train run of the suite")
    return {"path": str(path), "common": common, "groups": groups}


# ---------------------------------------------------------------------------- results
_BULKY = ("per_class", "model_config", "phases_ms", "stages")


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """A run's ``metrics.json`` / benchmark JSON without the bulky parts: per-class AP reduced to
    ``{class: ap}``, benchmark phases and model configs dropped, stage details to their seconds."""

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k == "per_class" and isinstance(v, dict):
                    out["ap"] = {c: (x or {}).get("ap") for c, x in v.items()}
                elif k not in _BULKY:
                    out[k] = walk(v)
            return out
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj

    return walk(result)


def _write_json(path: Path, obj: Any) -> None:
    """Atomic (``detkit.utils.atomic``): a call killed mid-write leaves the previous file whole."""
    from detkit.utils.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _tail(path: Path, chars: int = 2500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _record(run: Run, work: Path, command: list[str], status: str, seconds: float | None,
            error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": run.name, "kind": run.kind, "status": status, "notes": run.notes,
                             "budget_s": run.budget_s, "seconds": seconds,
                             "command": shlex.join([Path(command[0]).name, *command[1:]])}
    result = run.result_path(work)
    if result.is_file():
        try:
            entry["result"] = compact(json.loads(result.read_text()))
        except (OSError, ValueError) as e:
            entry["status"], error = "failed", f"{result}: unreadable result: {e}"
    if error:
        entry["error_tail"] = error
    return entry


def runner_commit() -> dict[str, Any]:
    """The checkout's commit, or ``DETKIT_COMMIT`` from the environment where there is no ``.git``."""
    from detkit.utils.provenance import git_commit

    git = git_commit()
    if git.get("commit") is None and os.environ.get("DETKIT_COMMIT"):
        git = {"commit": os.environ["DETKIT_COMMIT"], "dirty": None}
    return git


def run_groups(suite: dict[str, Any], groups: Sequence[str], *, work: str | os.PathLike,
               results: str | os.PathLike, max_seconds: float | None = None, python: str = sys.executable,
               cwd: str | os.PathLike = REPO, env: dict[str, str] | None = None,
               echo: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every run of ``groups`` in order; return ``{group: its results JSON}``.

    Finished runs are skipped (status ``done``, their result re-read); a failing run is recorded
    (``failed``, the tail of its log ``<work>/<name>/run.log``) and the next one starts. With
    ``max_seconds``, a run whose ``budget_s`` no longer fits the time left is not started
    (``not_started``) and a started one is killed when the time is up (``timeout``).
    ``<results>/<group>.json`` is rewritten after every run.
    """
    unknown = [g for g in groups if g not in suite["groups"]]
    if unknown:
        raise SuiteError(f"{suite['path']}: no group {unknown} (has {', '.join(suite['groups'])})")
    work, results = Path(work), Path(results)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    start = time.monotonic()
    out: dict[str, dict[str, Any]] = {}
    total = sum(len(suite["groups"][g]) for g in groups)
    done_count = 0
    for g in groups:
        doc = {"schema": SCHEMA, "suite": suite["path"], "group": g, "git": runner_commit(), "runs": []}
        out[g] = doc
        for run in suite["groups"][g]:
            done_count += 1
            command = run.command(work, suite["common"][run.kind], python)
            label = f"[{done_count}/{total}] {g}/{run.name}"
            elapsed = time.monotonic() - start
            if run.result_path(work).is_file():
                entry = _record(run, work, command, "done", None)
                echo(f"{label}: already finished, skipped")
            elif max_seconds is not None and elapsed + (run.budget_s or 0.0) > max_seconds:
                entry = _record(run, work, command, "not_started", None,
                                f"budget_s {run.budget_s} does not fit the {max_seconds - elapsed:.0f} s left")
                echo(f"{label}: not started ({entry['error_tail']})")
            else:
                entry = _execute(run, work, command, label, cwd, env,
                                 None if max_seconds is None else max_seconds - elapsed, echo)
            doc["runs"].append(entry)
            _write_json(results / f"{g}.json", doc)
    return out


def _execute(run: Run, work: Path, command: list[str], label: str, cwd, env, timeout: float | None,
             echo: Callable[[str], None]) -> dict[str, Any]:
    log_path = work / run.name / "run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    source = work / run.init_from / "last.pt" if run.init_from else None
    if source is not None and not (work / run.name / "last.pt").is_file():
        if not source.is_file():
            entry = _record(run, work, command, "failed", None, f"init_from: {source} does not exist")
            echo(f"{label}: failed ({entry['error_tail']})")
            return entry
        shutil.copyfile(source, work / run.name / "last.pt")
    echo(f"{label}: {shlex.join(command[1:])}")
    t0 = time.monotonic()
    status, error = "ok", None
    with open(log_path, "w") as log:
        try:
            rc = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        except OSError as e:
            rc, status, error = None, "failed", f"cannot start {command[0]}: {e}"
    seconds = time.monotonic() - t0
    if status == "ok" and (rc != 0 or not run.result_path(work).is_file()):
        status = "failed"
    if status != "ok" and error is None:
        error = f"exit status {rc}; log {log_path}:\n{_tail(log_path)}"
    entry = _record(run, work, command, status, round(seconds, 2), error)
    echo(f"{label}: {entry['status']} in {seconds:.1f} s" + ("" if entry["status"] == "ok" else
                                                               f"\n{(entry.get('error_tail') or '')[-800:]}"))
    return entry


# ---------------------------------------------------------------------------- proposals
def proposal_runs(suite: dict[str, Any], groups: Sequence[str] | None = None) -> list[Run]:
    """The train runs whose method trains on precomputed proposals (their caches must exist first)."""
    from omegaconf import OmegaConf

    picked = []
    for g, runs in suite["groups"].items():
        if groups and g not in groups:
            continue
        for r in runs:
            method = next((a.split("=", 1)[1] for a in r.args if a.startswith("method=")), None)
            if r.kind == "train" and method and (CONFIG_DIR / "method" / f"{method}.yaml").is_file():
                if OmegaConf.load(CONFIG_DIR / "method" / f"{method}.yaml").get("requires_proposals"):
                    picked.append(r)
    return picked


def precompute_proposals(suite: dict[str, Any], groups: Sequence[str] | None = None, *, workers: int = 2,
                         echo: Callable[[str], None] = print) -> list[str]:
    """Compute the selective search caches the suite's proposal-trained runs will read (train and
    test splits), with exactly their composed ``data`` config; returns the cache folders' parents."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from detkit.engine.setup import load_split, prepare_data
    from detkit.proposals.source import check_proposals_spec, prepare_proposals

    done: set[str] = set()
    for run in proposal_runs(suite, groups):
        overrides = [a for a in [*suite["common"]["train"], *run.args] if not a.startswith(("hydra", "run_dir"))]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose("train", overrides=overrides)
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        spec = check_proposals_spec(data_cfg.get("proposals"))
        if spec.get("file") is not None:
            continue
        spec["workers"] = workers
        key = json.dumps([data_cfg.get("root"), spec], sort_keys=True, default=str)
        if key in done:
            continue
        done.add(key)
        prepare_data(data_cfg)  # a generated data set (synthetic) is written first
        train = load_split(data_cfg, "train")
        for split in ("train", "test"):
            data = train if split == "train" else load_split(data_cfg, split, train.class_names)
            if data is not None:
                echo(f"{run.name}: selective search of {data.name} ({len(data)} images) into {spec['cache_dir']}")
                prepare_proposals(spec, data)
    return sorted({json.loads(k)[1]["cache_dir"] for k in done})
