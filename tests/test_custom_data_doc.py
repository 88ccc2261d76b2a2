"""docs/custom_data.md, run: every `detkit ...` command of the tutorial, on small generated sets in the
VOC, COCO and YOLO layouts (tiny networks and budgets appended to the training commands)."""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_data.md"
# Appended to the tutorial's training commands: a tiny network and a budget of two steps.
TINY = ["backbone.width=0.125", "data.transforms.min_size=64", "data.transforms.max_size=96",
        "method.model.anchor_sizes=[16,32,64]", "solver.max_iters=2", "solver.max_time_s=60", "solver.warmup_iters=0",
        "num_workers=0", "progress=false", "tensorboard=false", "test.batch_size=2", "device=cpu"]


def _commands() -> list[list[str]]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("detkit "):
                out.append(shlex.split(line)[1:])
    return out


def _layouts(root: Path) -> dict[str, Path]:
    """The same generated images in the three layouts: root/voc, root/coco, root/yolo."""
    from detkit.data.convert import write_coco_json
    from detkit.data.synthetic import make_synthetic_voc
    from detkit.data.voc import load_voc

    voc = make_synthetic_voc(root / "voc", num_images=12, image_size=(64, 96), object_size=(16, 40), seed=3)
    coco = root / "coco"
    shutil.copytree(voc / "JPEGImages", coco / "images")
    names = load_voc([voc], "trainval").class_names
    for split, name in (("trainval", "train"), ("test", "test")):  # every class in both files
        write_coco_json(load_voc([voc], split, names), coco / f"{name}.json")
    for name in ("train", "test"):  # image paths relative to the image folder
        doc = json.loads((coco / f"{name}.json").read_text())
        for im in doc["images"]:
            im["file_name"] = Path(im["file_name"]).name
        (coco / f"{name}.json").write_text(json.dumps(doc))
    yolo = root / "yolo"
    (yolo / "data.yaml").parent.mkdir(parents=True)
    (yolo / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {json.dumps(names)}\n")
    for split, yolo_split in (("trainval", "train"), ("test", "val")):
        for r in load_voc([voc], split, names).records:
            (yolo / "images" / yolo_split).mkdir(parents=True, exist_ok=True)
            (yolo / "labels" / yolo_split).mkdir(parents=True, exist_ok=True)
            shutil.copy(r.file_name, yolo / "images" / yolo_split / Path(r.file_name).name)
            lines = [f"{k} {(b[0] + b[2]) / 2 / r.width:.6f} {(b[1] + b[3]) / 2 / r.height:.6f} "
                     f"{(b[2] - b[0]) / r.width:.6f} {(b[3] - b[1]) / r.height:.6f}" for b, k in zip(r.boxes, r.labels)]
            (yolo / "labels" / yolo_split / f"{Path(r.file_name).stem}.txt").write_text("\n".join(lines))
    return {"voc": voc, "coco": coco, "yolo": yolo}


def _video(path: Path) -> None:
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.release()


def test_the_tutorial_runs_in_every_layout(tmp_path, monkeypatch, capsys):
    from detkit.cli import main

    layouts = _layouts(tmp_path / "sets")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "new_photos").mkdir()
    for p in sorted((layouts["voc"] / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(p, tmp_path / "new_photos" / p.name)
    _video(tmp_path / "clip.mp4")
    commands = _commands()
    assert {c[0] for c in commands} >= {"browse", "train", "infer", "eval"}
    ran = []
    for args in commands:
        fmt = next((a.split("=")[1] for a in args if a.startswith("data=")), "voc")
        args = [a.replace("myset", str(layouts[fmt])) for a in args]
        if args[0] == "train":
            args = [*args, *TINY, "resume=true"]
        elif args[0] == "browse":
            args = [*args, "--num", "2"]
        try:
            code = main(args)
        except SystemExit as e:  # Hydra's app
            code = e.code
        assert code in (0, None), f"detkit {' '.join(args)}: exit {code}\n{capsys.readouterr().err[-2000:]}"
        ran.append((args[0], fmt))
    for fmt in ("voc", "coco", "yolo"):
        assert ("train", fmt) in ran and ("browse", fmt) in ran
        metrics = json.loads(next(Path("outputs").glob(f"{fmt}-faster_rcnn-alexnet/metrics.json")).read_text())
        assert 0.0 <= metrics["voc07"]["mAP"] <= 1.0
    assert Path("found/clip.jsonl").is_file() and len(list(Path("found").glob("*.jpg"))) == 2
    assert ("eval", "voc") in ran and "mAP" in capsys.readouterr().out
