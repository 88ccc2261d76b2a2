"""Benchmark a detector: training images/s, inference latency (batch 1) and throughput (batch N).

    python tools/benchmark.py --method faster_rcnn --backbone vgg16 --input 600x1000 --batch 2 \\
        --precision bf16 --channels-last --mode both --compare torchvision --out bench.json
    python tools/benchmark.py --method faster_rcnn --backbone alexnet --width 0.5 --input 300x500 \\
        --device cpu --compare torchvision --roi-mode align
    python tools/benchmark.py --method fast_rcnn --backbone vgg16 --width 0.25 --proposals 2000

The model is built from configs/ (``configs/train.yaml`` composed with ``method=`` and
``backbone=``, plus ``--set key=value`` Hydra overrides), so any method/backbone config works.
Fast R-CNN gets random given proposals. What each number means: docs/performance.md and
``detkit.analysis.benchmark``. Prints a table; ``--out`` writes every field as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from detkit.analysis.benchmark import (  # noqa: E402
    DETKIT_PHASES, INFER_PHASES, PRECISIONS, TRAIN_PHASES, BenchmarkError, benchmark_detectors,
    git_commit, machine_info)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "detkit-benchmark/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="faster_rcnn", help="configs/method/<name>.yaml")
    p.add_argument("--backbone", default="vgg16", help="configs/backbone/<name>.yaml")
    p.add_argument("--width", type=float, default=None, help="backbone width multiplier")
    p.add_argument("--norm", default=None, help="backbone normalisation (none, bn, gn, frozen_bn, ...)")
    p.add_argument("--roi-mode", choices=("pool", "align"), default=None,
                   help="RoI max pooling (paper) or RoI Align; default: the method config's")
    p.add_argument("--num-classes", type=int, default=20, help="K object classes (VOC: 20)")
    p.add_argument("--input", default="600x1000", help="HxW of the random images")
    p.add_argument("--batch", type=int, default=2, help="training batch and inference throughput batch")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype (fp32: none)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    p.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--compare", choices=("torchvision",), default=None,
                   help="also build torchvision's FasterRCNN as the same network and time it")
    p.add_argument("--proposals", type=int, default=2000, help="random proposals per image (Fast R-CNN)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile detkit's trunk, RPN head and region head in place "
                        "(detkit.engine.compile); MODE: default, reduce-overhead, max-autotune, "
                        "max-autotune-no-cudagraphs. Compilation happens in the warmup calls.")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend with --compile (inductor; eager/aot_eager to debug)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of configs/train.yaml (repeatable), "
                        "e.g. --set method.model.rpn_post_nms_top_n_test=1000")
    p.add_argument("--out", default=None, help="write the JSON result here")
    return p.parse_args(argv)


def parse_input(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise BenchmarkError(f"--input must be HxW (e.g. 600x1000), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchmarkError(f"--device {name}: CUDA is not available on this machine")
        torch.cuda.set_device(device)  # events, streams and peak-memory stats of this GPU
    return device


def compose_config(args: argparse.Namespace) -> dict:
    """``configs/train.yaml`` with the method/backbone choices -> ``{"method", "backbone", ...}``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = [f"method={args.method}", f"backbone={args.backbone}",
                 f"channels_last={str(bool(args.channels_last)).lower()}"]
    if args.width is not None:
        overrides.append(f"backbone.width={args.width}")
    if args.norm is not None:
        overrides.append(f"backbone.norm={args.norm}")
    if args.roi_mode is not None:
        overrides.append(f"method.model.roi_pool_mode={args.roi_mode}")
    overrides += list(args.overrides)
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            cfg = compose("train", overrides=overrides)
        return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("method", "backbone")}
    except (HydraException, OmegaConfBaseException) as e:
        raise BenchmarkError(f"configs/train.yaml with {overrides}: {str(e).splitlines()[0]}") from e


def run(args: argparse.Namespace) -> dict:
    """Build, measure (and compare); the full JSON result."""
    from detkit.analysis.torchvision_compare import ratios
    from detkit.engine.checkpoint import build_model

    input_hw = parse_input(args.input)
    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.num_classes < 1:
        raise BenchmarkError(f"--num-classes must be >= 1, got {args.num_classes}")
    torch.manual_seed(args.seed)
    cfg = compose_config(args)
    model = build_model(cfg, args.num_classes).to(device)
    common = dict(input_hw=input_hw, batch_size=args.batch, mode=args.mode, precision=args.precision,
                  warmup=args.warmup, repeats=args.repeats, num_classes=args.num_classes,
                  channels_last=args.channels_last, num_proposals=args.proposals, seed=args.seed)
    notes = []
    models = {"detkit": (model, DETKIT_PHASES)}
    if args.compare == "torchvision":
        from detkit.analysis.torchvision_compare import TORCHVISION_PHASES, build_torchvision_twin
        # Built before any training step, so both start from the same weights.
        models["torchvision"] = (build_torchvision_twin(model, input_hw), TORCHVISION_PHASES)
        if model.roi_head.roi_pool.mode != "align":
            notes.append("torchvision uses RoIAlign (aligned=False); detkit used RoI max pooling. "
                         "Rerun with --roi-mode align for the like-for-like comparison.")
        notes.append("torchvision's background RoIs are IoU in [0, 0.5); detkit's lower bound is "
                     f"{model.roi_head.matcher.thresholds[0]} (cannot be set in torchvision).")
    if args.compile is not None:
        from detkit.engine.compile import compile_model, compiled_modules
        # After the twin is built: torchvision's model is timed as its users run it, uncompiled.
        compile_model(model, mode=None if args.compile == "default" else args.compile,
                      backend=args.compile_backend)
        notes.append(f"detkit compiled ({args.compile_backend}, mode {args.compile}): "
                     f"{', '.join(compiled_modules(model))}"
                     + ("; torchvision not compiled" if "torchvision" in models else "")
                     + ". The first calls compile: use --warmup >= 3.")
    results = benchmark_detectors(models, **common)
    if device.type == "cpu":
        notes.append("CPU timings on a machine shared with other jobs vary from run to run; compare "
                     "numbers from the same run only.")
    out = {
        "schema": SCHEMA,
        "settings": {**vars(args), "input_hw": list(input_hw), "device": str(device),
                     "roi_pool_mode": model.roi_head.roi_pool.mode if hasattr(model, "roi_head") else None},
        "model_config": cfg,
        "machine": machine_info(device),
        "git": git_commit(REPO),
        "results": results,
        "ratios": ratios(results["detkit"], results["torchvision"]) if "torchvision" in results else {},
        "notes": notes,
    }
    return out


def _fmt(stats: dict) -> str:
    return f"{stats['median']:9.1f} [{stats['q1']:.1f}-{stats['q3']:.1f}]"


def format_table(result: dict) -> str:
    """The on-screen table: one block per model and measurement, phases as median ms."""
    s, m = result["settings"], result["machine"]
    lines = [f"{s['method']} / {s['backbone']} (width {s['width'] or 1.0}), input {s['input']}, "
             f"batch {s['batch']}, {s['precision']}{', channels_last' if s['channels_last'] else ''}, "
             f"RoI {s['roi_pool_mode']}{', compiled (' + s['compile'] + ')' if s.get('compile') else ''}; "
             f"warmup {s['warmup']}, repeats {s['repeats']}",
             f"device {s['device']} ({m['gpu'] or m['cpu']}, {m['cpu_cores']} cores, "
             f"{m['torch_threads']} threads); torch {m['torch']}, torchvision {m['torchvision']}; "
             f"commit {(result['git']['commit'] or 'unknown')[:12]}"
             f"{' (dirty)' if result['git']['dirty'] else ''}", ""]
    header = (f"{'model':<12} {'measurement':<21} {'total ms [IQR]':>24} {'img/s':>8} {'peak MB':>8} "
              f"{'RoIs/img':>8} {'dets/img':>8}  phases (median ms)")
    lines += [header, "-" * len(header)]
    for name, res in result["results"].items():
        for key in ("train", "infer_latency", "infer_throughput"):
            if key not in res:
                continue
            r = res[key]
            phases = TRAIN_PHASES if key == "train" else INFER_PHASES
            text = " ".join(f"{p}={r['phases_ms'][p]['median']:.1f}" for p in (*phases, "other"))
            label = f"{key} (b{r['batch_size']})"
            dets = f"{r['detections_per_image']:8.1f}" if "detections_per_image" in r else f"{'-':>8}"
            lines.append(f"{name:<12} {label:<21} {_fmt(r['total_ms']):>24} {r['images_per_s']:8.2f} "
                         f"{r['peak_memory_mb']:8.0f} {r['rois_per_image']:8.1f} {dets}  {text}")
    if result["ratios"]:
        lines.append("")
        lines += [f"detkit / torchvision {k}: {v:.3f}" for k, v in result["ratios"].items()]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (BenchmarkError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
