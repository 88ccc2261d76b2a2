"""The README's main job: train a small Faster R-CNN on a generated data set, evaluate, draw.

    python tools/demo.py [extra overrides, e.g. solver.max_iters=100]

1. generates the synthetic VOC-layout set (``detkit.data.synthetic``) into ``outputs/demo/data``;
2. trains Faster R-CNN with a half-width AlexNet (batch norm, trained from scratch) on the CPU
   (or the GPU when there is one) for a few hundred iterations — ``tools/train.py`` with the
   overrides below, so the same run can be reproduced or resumed from the command line;
3. evaluates it on the test split (VOC07/VOC12 mAP and COCO metrics → ``outputs/demo/run/metrics.json``);
4. runs ``tools/infer.py`` on a few test images → ``outputs/demo/infer/*.jpg`` and ``detections.json``.

Anchors are 32/64/128 px because the generated objects are 20-120 px (the paper's 128-512 px anchors
are for 600-px Pascal images). Needs no download and no data set beside the repository.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


OUT = Path("outputs/demo")

DEMO_OVERRIDES = [
    "data=synthetic",
    f"data.root={OUT / 'data'}",
    "method=faster_rcnn",
    "backbone=alexnet",
    "backbone.width=0.5",
    "backbone.norm=bn",
    "backbone_name=alexnet",
    f"run_dir={OUT / 'run'}",
    "overwrite=true",  # each `make demo` trains the demo afresh
    "method.model.anchor_sizes=[32,64,128]",
    "solver.batch_size=4",
    "solver.max_iters=300",
    "solver.lr=0.02",
    "solver.warmup_iters=50",
    "solver.milestones=[240]",
    "checkpoint_every=100",
    "num_workers=1",
    "log_every=25",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    from hydra import compose, initialize_config_dir

    from detkit.cli import infer
    from detkit.engine.config import CONFIG_DIR
    from detkit.engine.run import train_from_config

    start = time.time()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name="train", overrides=DEMO_OVERRIDES + argv)
    print("detkit demo: detkit train " + " ".join(DEMO_OVERRIDES + argv))
    summary = train_from_config(cfg)
    test = summary.get("test") or {}

    test_list = OUT / "data" / "ImageSets" / "Main" / "test.txt"
    ids = test_list.read_text().split()[:4]
    images = [str(OUT / "data" / "JPEGImages" / f"{i}.jpg") for i in ids]
    rc = infer.main(["--checkpoint", str(OUT / "run" / "last.pt"), *images, "--out", str(OUT / "infer"),
                     "--score-threshold", "0.5"])
    if rc:
        return rc

    print(f"\ndetkit demo finished in {time.time() - start:.0f} s")
    if test:
        print(f"  test mAP  VOC07 {test['voc07']['mAP']:.3f}   VOC12 {test['voc12']['mAP']:.3f}"
              + (f"   COCO AP {test['coco']['AP']:.3f}  AP50 {test['coco']['AP50']:.3f}" if test.get("coco") else ""))
    print(f"  metrics   {OUT / 'run' / 'metrics.json'}")
    print(f"  pictures  {OUT / 'infer'}/*.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
