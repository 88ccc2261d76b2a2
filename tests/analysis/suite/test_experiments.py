"""Suites: loading and validation, the GPU suite's runs compose, and the report's tables/markers/plot."""
import json
from pathlib import Path

import pytest

from detkit.analysis.suite import results_report as rr
from detkit.analysis.suite.experiments import SuiteError, compact, load_suite, proposal_runs
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[3]


def test_load_suite_splices_vars_and_builds_commands(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("vars: {d: [data=bccd, data.root=.data/bccd]}\n"
                 "common: {train: [progress=false], benchmark: [--device, cpu]}\n"
                 "groups:\n  g:\n    - {name: a, overrides: ['${vars.d}', solver.max_iters=3], budget_s: 10}\n"
                 "    - {name: b, kind: benchmark, args: [--batch, 2]}\n")
    s = load_suite(f)
    a, b = s["groups"]["g"]
    assert a.args == ["data=bccd", "data.root=.data/bccd", "solver.max_iters=3"] and a.budget_s == 10.0
    assert a.command(Path("w"), s["common"]["train"], "py") == [
        "py", "-m", "detkit", "train", "progress=false", "data=bccd", "data.root=.data/bccd", "solver.max_iters=3",
        "run_dir=w/a"]
    assert b.command(Path("w"), s["common"]["benchmark"], "py")[-4:] == ["--batch", "2", "--out", "w/b/benchmark.json"]


@pytest.mark.parametrize("body, message", [
    ("groups: {g: [{name: a, kind: eval}]}", "kind must be one of"),
    ("groups: {g: [{name: a}, {name: a}]}", "repeated"),
    ("groups: {g: [{name: a, init_from: nope}]}", "init_from 'nope'"),
    ("groups: {}", "non-empty 'groups'"),
    ("groups: {g: [{name: a, overrides: '${vars.missing}'}]}", "cannot read"),
])
def test_bad_suites_name_the_file(tmp_path, body, message):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(SuiteError, match=message) as e:
        load_suite(f)
    assert "bad.yaml" in str(e.value)


def _check_budgeted_schedules(cfg, name):
    """A cosine cut short by a time budget must run on the time clock, or its LR never decays
    (stage 1 of R-CNN/SPPNet as much as the solver)."""
    solvers = [cfg.solver] + ([cfg.method.stages.finetune] if "stages" in cfg.method else [])
    for s in solvers:
        if s.get("max_time_s") and s.get("schedule") == "cosine":
            assert s.get("schedule_clock") == "time", name


def _composed_train_runs(suite):
    """``(group, run, cfg)`` of every train run of ``suite``, composed with configs/train.yaml after
    checking it names no unknown key; budgeted cosines are checked to run on the time clock."""
    from hydra import compose, initialize_config_dir

    train = load_tool("train")
    for g, runs in suite["groups"].items():
        for r in runs:
            if r.kind != "train":
                continue
            args = [*suite["common"]["train"], *r.args]
            assert train.unknown_key_message(args) is None, r.name
            with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
                cfg = compose("train", overrides=args)
            _check_budgeted_schedules(cfg, r.name)
            yield g, r, cfg


def test_gpu_suite_is_valid():
    """Every train run of the GPU suite composes with configs/train.yaml (no unknown key), reads its
    data from .data/, uses the one proposal cache, and each group's budgets fit a 600 s call."""
    suite = load_suite(REPO / "configs/experiments/gpu.yaml")
    assert {"headline", "faster_bccd", "faster_raccoon", "fast_rcnn", "overfeat", "bench"} <= set(suite["groups"])
    for g, runs in suite["groups"].items():
        assert sum(r.budget_s for r in runs) < 570, g
    for _, r, cfg in _composed_train_runs(suite):
        assert cfg.data.root.startswith(".data/") and cfg.data.proposals.cache_dir == ".data/proposals", r.name
    assert {r.name.split("-")[1] for r in proposal_runs(suite)} == {"fast", "rcnn", "sppnet"}


def test_cpu_suite_is_valid():
    """The CPU suite: every run composes, runs on the CPU without mixed precision, reads .data/,
    and covers all five methods; stage-1 budgets of R-CNN/SPPNet are set."""
    suite = load_suite(REPO / "configs/experiments/cpu.yaml")
    methods = set()
    for _, r, cfg in _composed_train_runs(suite):
        assert cfg.device == "cpu" and cfg.amp == "none" and cfg.data.root.startswith(".data/"), r.name
        if "stages" in cfg.method:
            assert cfg.method.stages.finetune.max_time_s > 0, r.name
        else:
            assert cfg.solver.max_time_s > 0, r.name
        methods.add(cfg.method.name)
    assert methods == {"faster_rcnn", "fast_rcnn", "sppnet", "rcnn", "overfeat"}


def _group(name, runs):
    return {"schema": "detkit-experiments/1", "suite": "s.yaml", "group": name, "runs": runs}


def _train_entry(name, data, map07, ms, status="ok"):
    return {"name": name, "kind": "train", "status": status, "notes": "", "budget_s": 60, "seconds": 42.0,
            "command": f"python tools/train.py run_dir=w/{name}",
            "result": {"data": f"{data}/test", "iteration": 100, "train_seconds": 30.0,
                       "train_images_per_second": 26.7, "stopped_by": "max_time_s",
                       "voc07": {"mAP": map07, "ap": {"RBC": 0.7, "WBC": 2 * map07 - 0.7}},
                       "coco": {"AP50": 0.5}, "test_seconds_per_image": ms / 500.0,
                       "test_model_seconds_per_image": ms / 1000.0,
                       "machine": {"gpu": "NVIDIA H100", "torch": "2.11"}, "git": {"commit": "abcdef1234567890"}}}


def test_report_rewrites_only_marked_sections_and_plots(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkeep me\n\n<!-- experiments:a -->\nold table\n<!-- /experiments:a -->\n\ntail\n")
    groups = [_group("a", [_train_entry("r1", "bccd", 0.812, 12.0), _train_entry("r2", "raccoon", 0.5, 30.0)]),
              _group("b", [{"name": "x", "kind": "train", "status": "failed", "command": "c", "error_tail": "boom"}])]
    rr.write_report(groups, doc)
    text = doc.read_text()
    assert text.startswith("# Results\n\nkeep me\n") and "\ntail\n" in text and "old table" not in text
    row = next(line for line in text.splitlines() if line.startswith("| r1 |"))
    # iterations, train s, img/s, stopped by, mAP, AP50, test ms (24.0 = 2 x 12), model ms
    assert row == "| r1 | ok | 100 | 30.0 | 26.7 | max_time_s | 0.812 | RBC 0.700, WBC 0.924 | 0.500 | 24.0 | 12.0 |"
    assert "NVIDIA H100" in text and "`abcdef123456`" in text
    assert "## Experiments: b\n\n<!-- experiments:b -->" in text and "| x | failed |" in text
    rr.write_report(groups, doc)  # idempotent
    assert doc.read_text() == text
    assert rr.speed_accuracy_points(groups, "bccd") == [("r1", 12.0, 0.812)]
    png = rr.plot_speed_accuracy(groups, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(rr.ReportError, match="no finished train run"):
        rr.plot_speed_accuracy(groups, tmp_path / "q.png", data="voc")


def test_bench_table_and_compact():
    result = {"results": {"detkit": {"train": {"batch_size": 2, "total_ms": {"median": 50.0}, "images_per_s": 40.0,
                                               "peak_memory_mb": 900.0, "phases_ms": {"trunk": {}}}}},
              "ratios": {"train_speedup": 1.25}, "model_config": {"big": 1}}
    small = compact({**result, "voc07": {"mAP": 0.5, "per_class": {"RBC": {"ap": 0.7, "npos": 3}}}})
    assert "model_config" not in small and "phases_ms" not in small["results"]["detkit"]["train"]
    assert small["voc07"] == {"mAP": 0.5, "ap": {"RBC": 0.7}}
    lines = rr.bench_table([{"name": "b", "status": "ok", "result": small}])
    assert "| b | ok | detkit | train (b2) | 50.0 | 40.0 | 900 |" in lines
    assert any("train_speedup 1.250" in line for line in lines)


def test_load_groups_errors(tmp_path):
    with pytest.raises(rr.ReportError, match="no such"):
        rr.load_groups([tmp_path / "nope"])
    (tmp_path / "x.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(rr.ReportError, match="x.json: not an experiments group"):
        rr.load_groups([tmp_path])


def test_sppnet_speedup_line():
    runs = [_train_entry("bccd-rcnn-alexnet", "bccd", 0.5, 400.0), _train_entry("bccd-sppnet-alexnet", "bccd", 0.5, 20.0)]
    text = rr.group_markdown(_group("rcnn_sppnet_bccd", runs))
    assert "`bccd-sppnet-alexnet` is 20.0x faster than `bccd-rcnn-alexnet`" in text
