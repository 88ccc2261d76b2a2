"""Benchmark a detector: training images/s, inference latency (batch 1) and throughput (batch N).

    python tools/benchmark.py --method faster_rcnn --backbone vgg16 --input 600x1000 --batch 2 \\
        --precision bf16 --channels-last --mode both --compare torchvision --out bench.json
    python tools/benchmark.py --method faster_rcnn --backbone alexnet --width 0.5 --input 300x500 \\
        --device cpu --compare torchvision --roi-mode align
    python tools/benchmark.py --method fast_rcnn --backbone vgg16 --width 0.25 --proposals 2000
    python tools/benchmark.py --methods rcnn sppnet overfeat fast_rcnn faster_rcnn --backbone vgg16 \
        --input 600x1000 --precision bf16 --proposals 2000 --out five.json

The model is built from configs/ (``configs/train.yaml`` composed with ``method=`` and
``backbone=``, plus ``--set key=value`` Hydra overrides), so any method/backbone config works.
``--methods`` builds several methods and times their batch-1 inference in one process on the
same random images (test time per image; ``--set METHOD:key=value`` overrides one method only).
Methods that take proposals (R-CNN, SPPNet, Fast R-CNN) get the same random given proposals, so
the proposal search is excluded. What each number means: docs/performance.md and
``detkit.analysis.benchmarking.benchmark``. Prints a table; ``--out`` writes every field as JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


import torch
from torch import nn

from detkit.engine.config import CONFIG_DIR
from detkit.cli.speed_options import add_speed_options
from detkit.analysis.benchmarking.benchmark import (
    DETKIT_PHASES, PRECISIONS, BenchmarkError, benchmark_detectors, git_commit, machine_info, phase_map,
    relative_to_fastest)
from detkit.analysis.benchmarking.tables import format_table

# 1.1: --methods (results keyed by method, "relative", "methods"; model_config {"backbone",
# "methods"}); a --method run writes the same fields as 1.0.
SCHEMA = "detkit-benchmark/1.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="faster_rcnn", help="configs/method/<name>.yaml")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="several methods (e.g. rcnn sppnet overfeat fast_rcnn faster_rcnn): batch-1 "
                        "inference of each, in one process on the same images; replaces --method")
    p.add_argument("--backbone", default="vgg16", help="configs/backbone/<name>.yaml")
    p.add_argument("--width", type=float, default=None, help="backbone width multiplier")
    p.add_argument("--norm", default=None, help="backbone normalisation (none, bn, gn, frozen_bn, ...)")
    p.add_argument("--roi-mode", choices=("pool", "align"), default=None,
                   help="RoI max pooling (paper) or RoI Align; default: the method config's")
    p.add_argument("--num-classes", type=int, default=20, help="K object classes (VOC: 20)")
    p.add_argument("--input", default="600x1000", help="HxW of the random images")
    p.add_argument("--batch", type=int, default=None,
                   help="training batch and inference throughput batch (default 2; 1 with --methods)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype (fp32: none)")
    p.add_argument("--channels-last", action="store_true", help="model and inputs in channels_last")
    p.add_argument("--mode", choices=("train", "infer", "both"), default=None,
                   help="default both; --methods measures inference only")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before each measurement")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--compare", choices=("torchvision",), default=None,
                   help="also build torchvision's FasterRCNN as the same network and time it")
    p.add_argument("--proposals", type=int, default=2000,
                   help="random given proposals per image for R-CNN, SPPNet and Fast R-CNN (papers: ~2000)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile detkit's trunk, RPN head and region head in place "
                        "(detkit.engine.compile); MODE: default, reduce-overhead, max-autotune, "
                        "max-autotune-no-cudagraphs. Compilation happens in the warmup calls.")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend with --compile (inductor; eager/aot_eager to debug)")
    add_speed_options(p, benchmark=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Hydra override of configs/train.yaml (repeatable), "
                        "e.g. --set method.model.rpn_post_nms_top_n_test=1000; with a METHOD: prefix "
                        "it applies to that method only, e.g. --set sppnet:method.model.scales=null")
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


def method_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """``--set`` overrides for ``method``: plain ones, and ``METHOD:key=value`` ones of this method."""
    names = getattr(args, "methods", None) or [args.method]
    out = []
    for o in args.overrides:
        head = o.split("=", 1)[0]
        if ":" not in head:
            out.append(o)
            continue
        prefix, rest = o.split(":", 1)
        if prefix not in names:
            raise BenchmarkError(f"--set {o}: {prefix!r} is not one of the benchmarked methods {names}")
        if prefix == method:
            out.append(rest)
    return out


def compose_config(args: argparse.Namespace, method: str | None = None) -> dict:
    """``configs/train.yaml`` with the method/backbone choices -> ``{"method", "backbone", ...}``.

    With ``--methods``, ``--roi-mode`` applies to the methods that have RoI pooling (Fast/Faster
    R-CNN); with ``--method`` a method without it is an error (Hydra's).
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    method = method or args.method
    overrides = [f"method={method}", f"backbone={args.backbone}",
                 f"channels_last={str(bool(args.channels_last)).lower()}"]
    if args.width is not None:
        overrides.append(f"backbone.width={args.width}")
    if args.norm is not None:
        overrides.append(f"backbone.norm={args.norm}")
    if args.roi_mode is not None and not getattr(args, "methods", None):
        overrides.append(f"method.model.roi_pool_mode={args.roi_mode}")
    overrides += method_overrides(args, method)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose("train", overrides=overrides)
        out = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("method", "backbone")}
    except (HydraException, OmegaConfBaseException) as e:
        raise BenchmarkError(f"configs/train.yaml with {overrides}: {str(e).splitlines()[0]}") from e
    model = out["method"].get("model") or {}
    if args.roi_mode is not None and getattr(args, "methods", None) and "roi_pool_mode" in model:
        model["roi_pool_mode"] = args.roi_mode
    return out


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Mode and batch defaults, which differ between ``--method`` and ``--methods``."""
    if args.methods:
        if args.mode not in (None, "infer"):
            raise BenchmarkError(f"--methods measures test time (inference) only; got --mode {args.mode}")
        if args.compare is not None:
            raise BenchmarkError("--compare torchvision needs a single Faster R-CNN (--method faster_rcnn), "
                                 "not --methods")
        if args.fast or args.svd or args.int8 or args.int8_trunk is not None:
            raise BenchmarkError("--fast, --svd, --int8 and --int8-trunk apply to one detector against torchvision: "
                                 "use --method, not --methods")
        if len(set(args.methods)) != len(args.methods):
            raise BenchmarkError(f"--methods lists a method twice: {args.methods}")
        args.mode, args.batch = "infer", args.batch or 1
    else:
        args.mode, args.batch = args.mode or "both", args.batch or 2
    return args


def _setup(args: argparse.Namespace) -> tuple[tuple[int, int], torch.device]:
    input_hw = parse_input(args.input)
    device = pick_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.num_classes < 1:
        raise BenchmarkError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.int8_trunk is not None and args.int8_trunk < 1:
        raise BenchmarkError(f"--int8-trunk: N must be at least 1, got {args.int8_trunk}")
    return input_hw, device


def run_methods(args: argparse.Namespace) -> dict:
    """``--methods``: build every method (random weights), time batch-1 inference of all of them,
    interleaved, on the same random images and given proposals; the full JSON result."""
    from detkit.analysis.benchmarking.method_inputs import install_random_test_parts, proposal_source
    from detkit.engine.checkpoint import build_model

    input_hw, device = _setup(args)
    models, info, configs, notes = {}, {}, {}, []
    for i, name in enumerate(args.methods):
        cfg = compose_config(args, name)
        torch.manual_seed(args.seed + i)  # each method's random weights, reproducibly
        model = build_model(cfg, args.num_classes).to(device)
        installed = install_random_test_parts(model, generator=torch.Generator().manual_seed(args.seed + i))
        if installed:
            notes.append(f"{name}: untrained {' and '.join(installed)} set to random N(0, 0.01^2) values so "
                         "the full test path (SVM scoring, box regression) runs.")
        models[name] = (model, phase_map(model))
        configs[name] = cfg["method"]
        backbone_cfg = cfg["backbone"]
        info[name] = {"proposals": proposal_source(model, args.proposals), "random_test_parts": installed,
                      "roi_pool_mode": getattr(getattr(getattr(model, "roi_head", None), "roi_pool", None),
                                               "mode", None)}
    if args.compile is not None:
        from detkit.engine.compile import compile_model, compiled_modules
        for name, (model, _) in models.items():
            compile_model(model, mode=None if args.compile == "default" else args.compile,
                          backend=args.compile_backend)
            notes.append(f"{name} compiled ({args.compile_backend}, mode {args.compile}): "
                         f"{', '.join(compiled_modules(model)) or 'nothing'}")
    results = benchmark_detectors(models, input_hw=input_hw, batch_size=args.batch, mode="infer",
                                  precision=args.precision, warmup=args.warmup, repeats=args.repeats,
                                  num_classes=args.num_classes, channels_last=args.channels_last,
                                  num_proposals=args.proposals, seed=args.seed)
    given = [n for n in models if info[n]["proposals"].startswith("given")]
    own = {"RPN": "its RPN is timed (proposals phase)", "dense windows": "needs none (dense windows)"}
    notes.append("Proposal search (selective search) excluded: "
                 + (f"{', '.join(given)} got the same {args.proposals} random boxes per image, made before "
                    "timing" if given else "no method takes given proposals")
                 + "".join(f"; {n}: {own.get(info[n]['proposals'], 'its own')}" for n in models if n not in given)
                 + ".")
    if device.type == "cpu":
        notes.append("CPU timings on a machine shared with other jobs vary from run to run; compare "
                     "numbers from the same run only.")
    return {
        "schema": SCHEMA,
        "settings": {**vars(args), "input_hw": list(input_hw), "device": str(device),
                     "roi_pool_mode": {n: info[n]["roi_pool_mode"] for n in models}},
        "model_config": {"backbone": backbone_cfg, "methods": configs},
        "machine": machine_info(device),
        "git": git_commit(),
        "methods": info,
        "results": results,
        "relative": relative_to_fastest(results),
        "ratios": {},
        "notes": notes,
    }


def run(args: argparse.Namespace) -> dict:
    """Build, measure (and compare); the full JSON result."""
    from detkit.analysis.benchmarking.torchvision_compare import ratios
    from detkit.engine.checkpoint import build_model

    resolve_defaults(args)
    if args.methods:
        return run_methods(args)
    input_hw, device = _setup(args)
    torch.manual_seed(args.seed)
    cfg = compose_config(args)
    model = build_model(cfg, args.num_classes).to(device)
    common = dict(input_hw=input_hw, batch_size=args.batch, mode=args.mode, precision=args.precision,
                  warmup=args.warmup, repeats=args.repeats, num_classes=args.num_classes,
                  channels_last=args.channels_last, num_proposals=args.proposals, seed=args.seed)
    notes = []
    models = {"detkit": (model, DETKIT_PHASES)}
    if args.compare == "torchvision":
        from detkit.analysis.benchmarking.torchvision_compare import TORCHVISION_PHASES, build_torchvision_twin
        # Built before any training step, so both start from the same weights.
        models["torchvision"] = (build_torchvision_twin(model, input_hw), TORCHVISION_PHASES)
        if model.roi_head.roi_pool.mode != "align":
            notes.append("torchvision uses RoIAlign (aligned=False); detkit used RoI max pooling. "
                         "Rerun with --roi-mode align for the like-for-like comparison.")
        notes.append("torchvision's background RoIs are IoU in [0, 0.5); detkit's lower bound is "
                     f"{model.roi_head.matcher.thresholds[0]} (cannot be set in torchvision).")
        if any(isinstance(m, nn.LocalResponseNorm) for m in model.backbone.trunk.modules()):
            notes.append("local response normalisation: torchvision's trunk uses torch.nn.LocalResponseNorm, "
                         "detkit's the same function summed by a 1x1 convolution (detkit.backbones.lrn)")
        if args.mode in ("train", "both"):
            notes.append("training steps: detkit's SGD built as its trainer builds it (fused kernel where PyTorch "
                         "has one; one parameter group), torchvision with torch.optim.SGD's defaults, as its "
                         "reference scripts")
    if args.fast:
        from detkit.engine.precision import auto_choice
        # detkit only: torchvision stays float32 eager, as its users run it.
        amp, why = auto_choice(device)
        detkit_precision = "bf16" if amp == "bf16" else "fp32"
        common["precision"] = {"detkit": detkit_precision, "torchvision": args.precision}
        from detkit.compression import make_fast
        folded = make_fast(model, fold=args.mode == "infer")  # folding replaces the norms: inference only
        notes.append(f"--fast: detkit in {'bf16 autocast' if amp == 'bf16' else 'fp32'} ({why}), "
                     f"channels_last, {len(folded)} batch norms folded into their convolutions"
                     f"{'' if args.mode == 'infer' else ' (folding is for --mode infer only)'}; "
                     f"torchvision {args.precision}, contiguous, as its users run it.")
    if args.svd:
        from detkit.compression import compress_region_head
        # After the twin is built (it copies detkit's region head); the twin keeps full fc layers.
        if args.mode != "infer":
            raise BenchmarkError("--svd is a test-time compression: use it with --mode infer")
        try:
            reports = compress_region_head(model, args.svd)
        except ValueError as e:
            raise BenchmarkError(f"--svd: {e}") from None
        notes.append("detkit's region head factorised by truncated SVD: " + ", ".join(
            f"{r.name.rsplit('.', 1)[-1]} {r.shape[0]}x{r.shape[1]} rank {r.rank} ({r.energy_kept:.0%} of the energy, "
            f"{r.macs_after / r.macs_before:.0%} of the multiply-adds)" for r in reports))
    # --fast on the CPU includes int8 fc layers for inference (within 0.001 mAP; docs/performance.md)
    from detkit.compression import int8_in_fast
    if args.int8 or args.fast and args.mode == "infer" and device.type == "cpu" and int8_in_fast(model):
        from detkit.compression import quantize_linear_layers
        # After the twin is built (it copies detkit's region head) and after --svd (its factors are Linear too).
        if args.mode != "infer" or device.type != "cpu":
            raise BenchmarkError("--int8 is a test-time quantisation for the CPU: use it with --mode infer --device cpu")
        try:
            names = quantize_linear_layers(model)
        except (ValueError, RuntimeError) as e:
            raise BenchmarkError(f"--int8: {e}") from None
        notes.append(f"detkit's fc layers in int8 (dynamic quantisation): {', '.join(names)}")
    if args.int8_trunk is not None:
        notes.append(_quantize_trunk(model, args, input_hw, device))
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
                     "precision_by_model": (common["precision"] if isinstance(common["precision"], dict)
                                            else {name: args.precision for name in models}),
                     "roi_pool_mode": model.roi_head.roi_pool.mode if hasattr(model, "roi_head") else None},
        "model_config": cfg,
        "machine": machine_info(device),
        "git": git_commit(),
        "results": results,
        "ratios": ratios(results["detkit"], results["torchvision"]) if "torchvision" in results else {},
        "notes": notes,
    }
    return out


def _quantize_trunk(model, args: argparse.Namespace, input_hw: tuple[int, int], device: torch.device) -> str:
    """``--int8-trunk N``: detkit's trunk in int8, calibrated on N random images (after the twin is
    built: torchvision keeps its float trunk). Returns the note for the table."""
    from detkit.analysis.benchmarking.benchmark import random_batch
    from detkit.compression.int8_trunk import quantize_trunk

    if args.mode != "infer" or device.type != "cpu":
        raise BenchmarkError("--int8-trunk is a test-time quantisation for the CPU: use it with --mode infer "
                             "--device cpu")
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        inputs = [model.preprocess(random_batch(1, *input_hw, device=device, generator=gen))[0]
                  for _ in range(args.int8_trunk)]
    try:
        convs = quantize_trunk(model, inputs)
    except (ValueError, RuntimeError) as e:
        raise BenchmarkError(f"--int8-trunk: {e}") from None
    return (f"detkit's trunk in int8 (static quantisation): {convs} convolutions, calibrated on "
            f"{args.int8_trunk} random image(s)" + ("; torchvision's trunk float32" if args.compare else ""))


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
