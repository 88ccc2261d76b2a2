"""A whole lineage on a tiny generated set: every method trained (a few steps each, subprocesses,
CPU), measured and reported; resumed without training again; a given checkpoint tested alike."""
import json
import re
import sys

import numpy as np
import pytest

from detkit.analysis.lineage.measure import PHASES
from detkit.analysis.lineage.run import parse_assignments, pick_images, run_lineage
from detkit.analysis.lineage.steps import METHODS


def tiny(tmp):
    return ["backbone.width=0.125", f"data.root={tmp / 'syn'}", "data.generate.num_images=10",
            "+data.generate.image_size=[64,96]", "+data.generate.object_size=[20,40]",
            "data.transforms.min_size=64", "data.transforms.max_size=96", "data.proposals.mode=single",
            f"data.proposals.cache_dir={tmp / 'props'}", "data.proposals.workers=1", "solver.max_iters=2",
            "rcnn:method.stages.finetune.max_iters=2", "sppnet:method.stages.finetune.max_iters=2",
            "rcnn:method.model.batch_regions=16", "sppnet:method.model.batch_regions=16", "num_workers=0",
            "test.coco=false", "device=cpu", "seed=0"]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    log: list[str] = []
    page = run_lineage(tiny(tmp), out=tmp / "out", budget_s=60, proposals=12, num_images=2, workers=1,
                       python=sys.executable, echo=log.append)
    return tmp, page, log


def test_every_method_trained_measured_and_reported(lineage):
    tmp, page, log = lineage
    doc = json.loads((tmp / "out" / "lineage.json").read_text())
    assert [m["method"] for m in doc["methods"]] == list(METHODS) and not doc["failed"]
    assert len(doc["shown_images"]) == 2
    for m in doc["methods"]:
        run = json.loads((tmp / "out" / m["method"] / "metrics.json").read_text())
        assert m["metrics"]["voc07"]["mAP"] == run["voc07"]["mAP"]  # the run's own evaluation
        t = m["timing"]
        assert set(t["phases_ms"]) == set(PHASES) and all(v >= 0 for v in t["phases_ms"].values())
        assert t["total_ms"] == pytest.approx(sum(t["phases_ms"].values()))
        assert t["rois_per_image"] > 0 and t["images"] == 2
    by = {m["method"]: m["timing"] for m in doc["methods"]}
    # R-CNN runs no shared trunk; SPPNet and the later methods do
    assert by["rcnn"]["phases_ms"]["trunk"] == 0 and by["sppnet"]["phases_ms"]["trunk"] > 0
    assert by["faster_rcnn"]["proposal_source"] == "RPN" and by["fast_rcnn"]["proposal_source"] == "selective search"
    # the search-based methods ran on the same boxes: at most 12 per image
    assert by["rcnn"]["rois_per_image"] <= 12 and by["fast_rcnn"]["rois_per_image"] <= 12
    curves = doc["proposal_recall"]["curves"]
    assert set(curves) == {"selective search", "RPN"}
    for result in curves.values():
        recall = [r["recall"]["0.5"] for r in result["rows"] if r["count"] != "all"]
        assert recall == sorted(recall)  # more proposals never find fewer objects


def test_page_is_self_contained(lineage):
    tmp, page, _ = lineage
    text = page.read_text()
    sources = re.findall(r"<img[^>]* src='([^']*)'", text)
    # 2 images x (ground truth + 5 methods), phases, speed, recall, 5 PR plots
    assert len(sources) == 2 * 6 + 3 + 5
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "http://" not in text and "https://" not in text
    # methods table (head + 5), AP per class (head + the 4 generated classes), image grid (head + 2)
    assert text.count("<tr>") == (1 + 5) + (1 + 4) + (1 + 2)
    assert all((tmp / "out" / "figures" / f"pr_{m}.png").is_file() for m in METHODS)


def test_second_call_trains_and_times_nothing_again(lineage):
    tmp, _, _ = lineage
    log: list[str] = []
    run_lineage(tiny(tmp), out=tmp / "out", budget_s=60, proposals=12, num_images=2, workers=1, echo=log.append)
    assert sum("already finished, skipped" in line for line in log) == 5
    assert not [line for line in log if "timing the test pass" in line or "proposal recall:" in line]


def test_given_checkpoint_is_tested_not_trained(lineage, monkeypatch):
    from detkit.engine import precision

    tmp, _, _ = lineage
    log: list[str] = []
    out = tmp / "given"
    trained = json.loads((tmp / "out" / "faster_rcnn" / "metrics.json").read_text())
    # amp=auto (preset=cpu) is decided by timing in each process; here it decides the other way
    # than in the training run, and the given checkpoint is still tested as its run tested it.
    other = "none" if trained["test_amp"] == "bf16" else "bf16"
    monkeypatch.setattr(precision, "auto_choice", lambda device: (other, "this test"))
    run_lineage(tiny(tmp), out=out, methods=["faster_rcnn"], checkpoints={"faster_rcnn": tmp / "out" / "faster_rcnn" / "last.pt"},
                num_images=2, echo=log.append)
    assert not any("lineage/faster_rcnn" in line for line in log)  # no training command
    mine = json.loads((out / "faster_rcnn" / "metrics.json").read_text())
    assert mine["test_amp"] == trained["test_amp"]
    assert mine["voc07"]["mAP"] == pytest.approx(trained["voc07"]["mAP"], abs=1e-9)
    assert mine["checkpoint"].endswith("last.pt") and mine["train_seconds"] == trained["train_seconds"]
    doc = json.loads((out / "lineage.json").read_text())
    assert [m["method"] for m in doc["methods"]] == ["faster_rcnn"] and doc["methods"][0]["given"]


def test_a_failing_method_is_named_and_the_rest_shown(lineage):
    tmp, _, _ = lineage
    out = tmp / "one_fails"
    page = run_lineage([*tiny(tmp), "rcnn:+method.model.no_such_argument=1"], out=out, methods=["rcnn", "faster_rcnn"],
                       checkpoints={"faster_rcnn": tmp / "out" / "faster_rcnn" / "last.pt"}, proposals=12,
                       num_images=2, workers=1, echo=lambda _: None)
    doc = json.loads((out / "lineage.json").read_text())
    assert [m["method"] for m in doc["methods"]] == ["faster_rcnn"]
    assert doc["failed"]["rcnn"].startswith("training failed") and "run.log" in doc["failed"]["rcnn"]
    assert "no_such_argument" in (out / "rcnn" / "run.log").read_text()
    assert "Not shown:</b> rcnn: training failed" in page.read_text()


def test_changed_settings_and_trained_methods_are_not_mixed(lineage):
    tmp, _, _ = lineage
    with pytest.raises(ValueError, match=r"made with other settings \(overrides differ"):
        run_lineage([*tiny(tmp), "seed=1"], out=tmp / "out", budget_s=60, proposals=12, num_images=2)
    with pytest.raises(ValueError, match="budget of rcnn, sppnet, overfeat, fast_rcnn, faster_rcnn differ"):
        run_lineage(tiny(tmp), out=tmp / "out", budget_s=61, proposals=12, num_images=2)
    with pytest.raises(ValueError, match="faster_rcnn was trained in"):
        run_lineage(tiny(tmp), out=tmp / "out", budget_s=60, proposals=12, num_images=2,
                    checkpoints={"faster_rcnn": tmp / "out" / "faster_rcnn" / "last.pt"})
    with pytest.raises(ValueError, match="is a 'faster_rcnn' checkpoint, given for 'rcnn'"):
        run_lineage(tiny(tmp), out=tmp / "elsewhere", checkpoints={"rcnn": tmp / "out" / "faster_rcnn" / "last.pt"})


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="methods must be among"):
        run_lineage([], out=tmp_path, methods=["yolo"])
    with pytest.raises(FileNotFoundError, match="given for rcnn does not exist"):
        run_lineage([], out=tmp_path, checkpoints={"rcnn": tmp_path / "missing.pt"})
    with pytest.raises(ValueError, match="not among the methods run"):
        run_lineage([], out=tmp_path, methods=["rcnn"], checkpoints={"overfeat": __file__})
    with pytest.raises(ValueError, match="budget is given for overfeat"):
        run_lineage([], out=tmp_path, methods=["rcnn"], budgets={"overfeat": 10})
    with pytest.raises(ValueError, match="budgets must be positive"):
        run_lineage([], out=tmp_path, budget_s=float("nan"))
    with pytest.raises(ValueError, match="scoped to 'yolo'"):
        run_lineage(["yolo:method.model.x=1"], out=tmp_path)
    with pytest.raises(ValueError, match="METHOD=VALUE"):
        parse_assignments(["rcnn"], "--checkpoint")
    with pytest.raises(ValueError, match="unknown method"):
        parse_assignments(["yolo=1"], "--budget-of")


def test_pick_images_spreads_over_the_split():
    from detkit.data.record import DetectionData, Record

    records = [Record(image_id=i, file_name=f"{i}.jpg", width=10, height=10,
                      boxes=np.zeros((1 if i != 3 else 0, 4), np.float32), labels=np.zeros(1 if i != 3 else 0, np.int64))
               for i in range(10)]
    data = DetectionData(records=records, class_names=["a"])
    assert pick_images(data, 3) == [0, 5, 9]       # among the 9 with ground truth: first, middle, last
    assert pick_images(data, 50) == [i for i in range(10) if i != 3]


# ---------------------------------------------------------------- the page in a real browser
def _chromium() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (Debian/Ubuntu: apt-get install chromium; .ci/run installs it "
                "where it can): the lineage page's browser check is skipped")


def _browser(exe: str, *args: str) -> str:
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    r = subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _loaded(dom: str) -> tuple[int, int]:
    """The page's own count of pictures and of pictures that did not decode (its load handler)."""
    body = re.search(r"<body[^>]*>", dom).group(0)
    return (int(re.search(r'data-images="(\d+)"', body).group(1)),
            int(re.search(r'data-broken-images="(\d+)"', body).group(1)))


def test_page_opens_in_chromium_with_every_picture(lineage, tmp_path):
    from PIL import Image

    from detkit.analysis.lineage.report import _SELF_CHECK

    exe = _chromium()
    _, page, _ = lineage
    dom = _browser(exe, "--dump-dom", page.resolve().as_uri())
    assert _loaded(dom) == (2 * 6 + 3 + 5, 0)
    first_table = dom.split("<table>", 1)[1].split("</table>", 1)[0]
    assert first_table.count("<tr>") == 1 + len(METHODS)  # a row per method under the header
    shot = tmp_path / "page.png"
    _browser(exe, "--window-size=1200,1600", f"--screenshot={shot}", page.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # something was drawn
    # the check itself sees a picture that does not decode
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><img src='data:image/png;base64,AAAA'><img src='missing.png'>"
                      f"{_SELF_CHECK}</body></html>")
    assert _loaded(_browser(exe, "--dump-dom", broken.resolve().as_uri())) == (2, 2)


def test_operating_point_is_the_best_f1_score():
    from detkit.analysis.lineage.report import operating_thresholds
    from detkit.data.record import DetectionData, Record
    from detkit.evaluation.voc import evaluate_voc

    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    data = DetectionData(records=[Record(image_id=1, file_name="a.jpg", width=40, height=40, boxes=gt,
                                         labels=np.array([0, 1]))], class_names=["a", "b"])
    dets = {1: {"boxes": np.array([[0, 0, 10, 10], [30, 0, 40, 9], [0, 30, 9, 40], [31, 31, 39, 39]], np.float32),
                "scores": np.array([-0.5, 0.9, -0.8, 0.7], np.float32), "labels": np.array([0, 0, 0, 1])}}
    thresholds = operating_thresholds(evaluate_voc(dets, data), dets)
    # class a: a false positive at 0.9, the true one at -0.5 (an SVM margin), another false one below
    assert thresholds[0] == np.float32(-0.5)
    assert thresholds[1] == np.inf  # class b has no true positive: nothing is drawn
