"""Export a trained detector to ONNX or TorchScript, and check the file against PyTorch.

    detkit export --checkpoint outputs/bccd-faster_rcnn-vgg16/last.pt --format onnx --out model.onnx \\
        [--verify img1.jpg img2.jpg] [--no-verify] [--force] [--set KEY=VALUE ...] [--benchmark [--threads N]]

Faster R-CNN and Fast R-CNN export as one graph: uint8 RGB ``(3, H, W)`` image of any size in
(Fast R-CNN: plus ``proposals`` ``(P, 4)``), ``boxes``, ``scores``, ``labels`` in that image's
pixels out, resize and NMS inside (``detkit.export``; docs/deploy.md runs the file without
detkit). The file is then run (onnxruntime, or ``torch.jit.load``) and compared with PyTorch on
``--verify`` images (default: two generated ones); the command fails if they disagree.
``--set`` changes test-time settings first (e.g. ``method.model.box_score_thresh=0.3``).
An existing ``--out`` is kept unless ``--force``. ``--benchmark`` (ONNX) times onnxruntime against
the same graph in PyTorch, one image at a time, on the check images.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="detkit export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a detkit checkpoint (RUN/last.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, help="the file to write (.onnx or .pt)")
    p.add_argument("--verify", nargs="+", metavar="IMAGE", default=None,
                   help="images to compare the file with PyTorch on (default: two generated ones)")
    p.add_argument("--no-verify", action="store_true", help="write the file without running it")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--benchmark", action="store_true",
                   help="ONNX: also time onnxruntime against PyTorch on the check images (ms per image)")
    p.add_argument("--threads", type=int, default=None, help="threads for --benchmark (default: each runtime's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="test-time change of the checkpoint's config (repeatable)")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    import detkit
    from detkit.export import ExportError

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ExportError(f"{out} exists; pass --force to replace it")
    predictor = detkit.load(args.checkpoint, device="cpu", overrides=args.overrides)
    info = predictor.export(out, args.format, verify=not args.no_verify, images=args.verify,
                            benchmark=args.benchmark, threads=args.threads)
    check = info.get("check")
    where = f"{info['method']} -> {info['path']} ({args.format}; resize {info['min_size']}/{info['max_size']})"
    if check:
        print(f"{where}\nchecked on {check['images']} images, {check['detections']} detections: boxes within "
              f"{check['max_box_px']:.2g} px, scores within {check['max_score']:.2g} of PyTorch")
    else:
        print(f"{where}\nnot checked (--no-verify)")
    if "latency" in info:
        print(f"latency per image ({args.threads or 'default'} threads): onnxruntime "
              f"{info['latency']['onnxruntime_ms']:.1f} ms, PyTorch {info['latency']['pytorch_ms']:.1f} ms")
    return info


def main(argv=None) -> int:
    from detkit.engine.checkpoint import CheckpointError
    from detkit.export import ExportError
    from detkit.predictor import PredictorInputError

    args = parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        run(args)
    except (ExportError, CheckpointError, PredictorInputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
