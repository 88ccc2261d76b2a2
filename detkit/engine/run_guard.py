"""The run folder's guard: a run is never overwritten unasked, resumed under another config, or
continued from a stage that an older config made.

* :func:`guard_run_dir` — a ``run_dir`` that already holds a run (a checkpoint or ``metrics.json``)
  is continued only with ``resume=true`` and started over only with ``overwrite=true``; otherwise the
  run stops before any work with one line naming the folder and both ways out. ``resume=true``
  under a config that differs from the stored one in anything but how long and how visibly the run
  goes (:data:`RUN_LENGTH_KEYS`) stops and lists the differing keys, unless
  ``resume_changed_config=true``.
* :func:`fingerprint` / :func:`stale_keys` — the part of a config that determines one stage of a
  stage-wise recipe (R-CNN/SPPNet stages, 4-step alternating training). Each stage checkpoint stores
  its fingerprint; a stage is reused only while the current config has the same one, otherwise it
  and every later stage are computed again, and the log says which keys changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("detkit.run")

# Keys that say how long and how visibly a run goes, where it runs, and what is done after it:
# they may change when a run is resumed (configs/train.yaml).
RUN_LENGTH_KEYS: tuple[str, ...] = (
    "resume", "overwrite", "resume_changed_config", "run_dir", "backbone_name", "device", "progress",
    "tensorboard", "log_every", "checkpoint_every", "keep_every", "eval_every", "num_workers", "compile",
    "cudnn_benchmark", "test", "data.val", "data.test", "solver.max_iters", "solver.max_time_s",
)
# Inside method.model: settings used only at test time, which no training stage depends on.
TEST_TIME_KEYS: tuple[str, ...] = tuple(f"method.model.{k}" for k in (
    "score_thresh", "nms_thresh", "detections_per_img", "scorer", "chunk_size", "region_memory_mb",
    "box_score_thresh", "box_nms_thresh", "box_detections_per_img", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
    "proposer", "merge", "merge_confidence", "merge_thresh"))
# Files that show a run was (being) trained in a folder.
RUN_FILES: tuple[str, ...] = ("last.pt", "metrics.json", "stage*_*.pt", "step_*.pt", "finetune/last.pt",
                              "step_*/last.pt")


class RunDirError(ValueError):
    """The run folder holds a run that this command would overwrite, or resume under another config."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], *,
                       ignore: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every dotted key whose value differs (missing: ``None``),
    leaving out the keys under ``ignore``; sorted by key."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not _under(k, ignore))
    return [(k, a.get(k), b.get(k)) for k in keys if _plain(a.get(k)) != _plain(b.get(k))]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def existing_run_files(run_dir: str | Path) -> list[Path]:
    """The files in ``run_dir`` that show a run was (being) trained there (:data:`RUN_FILES`)."""
    run_dir = Path(run_dir)
    return sorted({p for pattern in RUN_FILES for p in run_dir.glob(pattern) if p.is_file()})


def _stored_config(files: Sequence[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The config of the newest checkpoint among ``files`` that stores one."""
    from detkit.engine.checkpoint import CheckpointError, load_checkpoint

    for path in sorted((f for f in files if f.suffix == ".pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            config = load_checkpoint(path).get("config")
        except CheckpointError:
            continue
        if config:
            return path, config
    return None


def guard_run_dir(conf: Mapping[str, Any]) -> str:
    """Check ``conf["run_dir"]`` before a run starts (module docstring): ``"new"`` (nothing there),
    ``"resume"`` or ``"overwrite"``.

    Raises:
        RunDirError: a run is there and neither ``resume`` nor ``overwrite`` is set, or ``resume``
            is set and the config differs from the stored one in other than run-length keys.
    """
    if not conf.get("run_dir"):
        return "new"
    run_dir = Path(conf["run_dir"])
    files = existing_run_files(run_dir)
    if not files:
        return "new"
    if conf.get("overwrite", False):
        log.warning("overwrite=true: starting a new run in %s; the files of the run there (%s) are replaced "
                    "as the new run writes its own", run_dir, ", ".join(str(f.relative_to(run_dir)) for f in files))
        return "overwrite"
    if not conf.get("resume", False):
        shown = ", ".join(str(f.relative_to(run_dir)) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise RunDirError(f"run_dir {run_dir} already holds a run ({shown}); continue it with resume=true, "
                          f"start it over with overwrite=true, or choose another run_dir=...")
    stored = _stored_config(files)
    if stored is not None and not conf.get("resume_changed_config", False):
        path, old = stored
        diffs = config_differences(old, dict(conf), ignore=RUN_LENGTH_KEYS)
        diffs = [d for d in diffs if d[2] != "auto"]  # "auto" was resolved when the run started, and stored
        if diffs:
            listed = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in diffs[:8])
            more = f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else ""
            raise RunDirError(f"resume=true, but the config differs from the one {path} was trained with: "
                              f"{listed}{more}. Resume with that config, add resume_changed_config=true to go on "
                              f"under the new one, or choose another run_dir=...")
    return "resume"


def fingerprint(conf: Mapping[str, Any], *, include: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The dotted keys of ``conf`` under ``include`` and not under ``exclude`` (nor test-time keys,
    nor the run-length keys other than ``solver.*``, which a stage's length follows): what
    determines one stage of a stage-wise recipe."""
    skip = (*exclude, *TEST_TIME_KEYS, *(k for k in RUN_LENGTH_KEYS if not k.startswith("solver.")))
    return {k: _plain(v) for k, v in sorted(flatten(conf).items()) if _under(k, include) and not _under(k, skip)}


def fingerprint_hash(print_: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint (names cache folders that belong to one stage's inputs)."""
    return hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:12]


def stale_keys(stored: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Keys whose value differs between a stored fingerprint and the current one (a stage written
    before fingerprints existed has none: every key counts as changed)."""
    if stored is None:
        return ["(no fingerprint stored)"]
    return [k for k, _, _ in config_differences(dict(stored), dict(current))]


def reusable_prefix(stages: Sequence[tuple[Path, str, Mapping[str, Any]]]) -> tuple[int, tuple[Path, list[str]] | None]:
    """How many leading stages of a stage-wise recipe a resumed run may reuse.

    Args:
        stages: per stage, in order: its checkpoint path, the checkpoint key holding its stored
            fingerprint, and the current config's fingerprint for it.

    Returns:
        ``(count, stale)``: the number of leading stages whose checkpoint exists and whose stored
        fingerprint the current one equals; ``stale`` is ``(path, changed keys)`` of the first
        stage stopped by a changed fingerprint (``None`` when a missing checkpoint stopped it, or
        none did).
    """
    from detkit.engine.checkpoint import load_checkpoint

    for count, (path, key, current) in enumerate(stages):
        if not Path(path).is_file():
            return count, None
        changed = stale_keys(load_checkpoint(path).get(key), current)
        if changed:
            return count, (Path(path), changed)
    return len(stages), None


def show_keys(keys: Sequence[str], limit: int = 6) -> str:
    """``"a, b, c (+4 more)"`` for a log line."""
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"
