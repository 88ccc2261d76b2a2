"""The ``detkit`` command: ``detkit <command> [arguments]`` (also ``python -m detkit``).

Each command is a module of this package with a ``main(argv)``; ``tools/<command>.py`` in a
checkout runs the same function. ``detkit <command> --help`` describes its arguments.
"""
from __future__ import annotations

import importlib
import sys

# command -> (module in detkit.cli, callable, one line of help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "main", "train a detector (Hydra overrides of configs/train.yaml)"),
    "infer": ("infer", "main", "detect objects in images with a checkpoint; pictures + detections.json"),
    "export": ("export", "main", "write a Faster / Fast R-CNN checkpoint as ONNX or TorchScript, checked against PyTorch"),
    "eval": ("eval", "main", "score a detections file against a VOC or COCO data set"),
    "demo": ("demo", "main", "train, evaluate and draw a small Faster R-CNN on a generated data set"),
    "browse": ("browse", "main", "a data set's ground truth drawn, counts per class, box sizes, problems"),
    "benchmark": ("benchmark", "main", "training images/s and inference latency, optionally against torchvision"),
    "compare-train": ("compare_train", "main", "detkit vs torchvision's Faster R-CNN at equal training time"),
    "proposals": ("proposals", "main", "selective search or RPN proposals of a data set, and their recall"),
    "summary": ("summary", "main", "per-layer table of a backbone (shapes, parameters, multiply-adds, RF)"),
    "compare-merges": ("compare_merges", "main", "OverFeat: greedy merge vs NMS on the same candidates"),
    "experiments": ("experiments", "main", "run a suite of training runs and write its report"),
    "lineage": ("lineage", "main", "train all five methods on one data set; one HTML report side by side"),
    "svm-solvers": ("svm_solvers", "cli", "R-CNN's SVM solvers timed on R-CNN-sized problems"),
    "make-synthetic": ("make_synthetic", "main", "write the generated demo data set in the VOC layout"),
    "voc2coco": ("voc2coco", "main", "convert a VOC split to a COCO annotation file"),
}
HYDRA_COMMANDS = ("train", "summary")  # Hydra apps: they read sys.argv themselves


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: detkit <command> [arguments]   (detkit <command> --help for its arguments)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from detkit import __version__
        print(f"detkit {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"detkit: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(f"detkit.cli.{module}"), func)
    if name in HYDRA_COMMANDS:
        return int(entry(rest, prog=f"detkit {name}") or 0)
    sys.argv = [f"detkit {name}", *rest]  # argparse's usage line names the command
    return int(entry(rest) or 0)
