"""tools/experiments.py end to end on the CPU: a tiny suite runs tools/train.py, stops a run at
its time budget, records a failing run and goes on, skips finished runs, reports into markers."""
import json
import sys
from pathlib import Path

import pytest
import torch
from tests._tools import load_tool

REPO = Path(__file__).resolve().parents[2]

TINY = ["backbone=alexnet", "backbone.width=0.125", "data.generate.num_images=10",
        "+data.generate.image_size=[64,96]", "+data.generate.object_size=[16,40]",
        "data.transforms.min_size=64", "data.transforms.max_size=96", "method.model.anchor_sizes=[16,32,64]",
        "solver.warmup_iters=1", "solver.batch_size=2", "num_workers=0", "test.batch_size=2", "test.coco=false"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    suite = tmp / "suite.yaml"
    suite.write_text(json.dumps({  # JSON is YAML
        "vars": {"tiny": TINY + [f"data.root={tmp / 'syn'}"]},
        "common": {"train": ["progress=false", "tensorboard=false", "resume=true"]},
        "groups": {
            "g": [
                # 1000 steps cannot finish in 2 s of training on any CPU: the time limit ends it
                {"name": "timed", "budget_s": 120, "overrides": ["${vars.tiny}", "solver.max_iters=1000",
                                                                 "solver.max_time_s=2", "solver.schedule_clock=time",
                                                                 "checkpoint_every=0"]},
                {"name": "broken", "budget_s": 60, "overrides": ["${vars.tiny}", "solver.max_itres=3"],
                 "notes": "a typo: must fail and not stop the suite"},
                {"name": "huge", "budget_s": 1.0e6, "overrides": ["${vars.tiny}"]},
            ]}}))
    exp = load_tool("experiments")
    work, results = tmp / "work", tmp / "results"
    argv = ["run", str(suite), "--group", "g", "--work", str(work), "--results", str(results),
            "--max-seconds", "5000"]
    rc = exp.main(argv)
    first = json.loads((results / "g.json").read_text())
    mtime = (work / "timed" / "metrics.json").stat().st_mtime_ns
    rc2 = exp.main(argv)
    second = json.loads((results / "g.json").read_text())
    return {"tmp": tmp, "work": work, "results": results, "rc": (rc, rc2), "first": first, "second": second,
            "mtime": mtime, "exp": exp}


def test_time_budget_stops_training_and_metrics_have_the_cost(ran):
    timed = ran["first"]["runs"][0]
    assert timed["status"] == "ok" and timed["command"].startswith(Path(sys.executable).name + " -m detkit train")
    m = timed["result"]
    assert m["stopped_by"] == "max_time_s" and 0 < m["iteration"] < 1000 and m["max_iters"] == 1000
    assert 2.0 <= m["train_seconds"] < 60
    assert m["train_images_per_second"] == pytest.approx(m["iteration"] * 2 / m["train_seconds"])
    assert 0 < m["test_model_seconds_per_image"] <= m["test_seconds_per_image"]
    assert m["machine"]["device"] == "cpu" and "commit" in m["git"] and 0 <= m["voc07"]["mAP"] <= 1
    assert "per_class" not in m["voc07"] and set(m["voc07"]["ap"]) == {"circle", "cross", "square", "triangle"}
    ckpt = torch.load(ran["work"] / "timed" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == m["iteration"] and ckpt["timing"]["stopped_by"] == "max_time_s"
    assert ckpt["timing"]["train_seconds"] == pytest.approx(m["train_seconds"])


def test_failing_run_is_recorded_and_the_suite_goes_on(ran):
    broken, huge = ran["first"]["runs"][1:]
    assert broken["status"] == "failed" and "max_itres" in broken["error_tail"]
    assert broken["notes"].startswith("a typo")
    assert huge["status"] == "not_started" and "does not fit" in huge["error_tail"]
    assert ran["rc"] == (1, 1)


def test_rerun_skips_finished_runs(ran):
    timed = ran["second"]["runs"][0]
    assert timed["status"] == "done" and timed["result"] == ran["first"]["runs"][0]["result"]
    assert (ran["work"] / "timed" / "metrics.json").stat().st_mtime_ns == ran["mtime"]
    assert ran["second"]["runs"][1]["status"] == "failed"


def test_report_cli_fills_markers_and_plots(ran, tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nintro\n\n<!-- experiments:g -->\n<!-- /experiments:g -->\n\n## After\n")
    png = tmp_path / "plot.png"
    assert ran["exp"].main(["report", str(ran["results"]), "--write", str(doc), "--plot", str(png),
                            "--plot-data", "synthetic"]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nintro\n\n<!-- experiments:g -->\n") and text.endswith("## After\n")
    assert "| timed | done |" in text and "max_time_s" in text and "| broken | failed |" in text
    assert png.stat().st_size > 1000
    assert ran["exp"].main(["report", str(tmp_path / "missing"), "--write", str(doc)]) == 2


def test_proposals_command_fills_the_cache_train_py_reads(tmp_path):
    """`experiments.py proposals` computes exactly the caches a Fast R-CNN run of the suite loads."""
    from detkit.analysis.suite.experiments import load_suite, proposal_runs
    from detkit.engine.setup import load_split
    from detkit.proposals.source import load_configured_proposals

    root, cache = tmp_path / "syn", tmp_path / "cache"
    data = [f"data.root={root}", "data.generate.num_images=4", "+data.generate.image_size=[48,64]",
            f"data.proposals.cache_dir={cache}"]
    suite = tmp_path / "s.yaml"
    suite.write_text(json.dumps({"groups": {"g": [
        {"name": "fast", "overrides": ["method=fast_rcnn", *data]},
        {"name": "faster", "overrides": ["method=faster_rcnn", *data]}]}}))
    assert [r.name for r in proposal_runs(load_suite(suite))] == ["fast"]
    assert load_tool("experiments").main(["proposals", str(suite), "--workers", "1"]) == 0
    spec = {"source": "selective_search", "mode": "fast", "max_side": 500, "min_size": 20, "cache_dir": str(cache)}
    node = {"name": "synthetic", "format": "voc", "train": {"roots": [str(root)], "splits": "trainval"},
            "test": {"roots": [str(root)], "splits": "test"}}
    for split in ("train", "test"):
        d = load_split(node, split)
        boxes = load_configured_proposals(spec, d, split=split)  # raises if any image is missing
        assert set(boxes) == {r.image_id for r in d.records}
