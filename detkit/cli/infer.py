"""Detect objects in images and videos with a trained checkpoint; write pictures and detections.

    detkit infer --checkpoint outputs/bccd-faster_rcnn-vgg16/last.pt img.jpg photos/ "shots/*.png" \\
        --out outputs/infer [--score-threshold 0.5] [--max-detections 100] [--device auto] [--batch-size 4] \\
        [--compile] [--fast] [--svd 1024 256] [--int8] [--int8-trunk 16] [--set method.model.merge=nms ...]
    detkit infer --checkpoint RUN/last.pt clip.mp4 --out outputs/video [--stride 2]   # a video
    detkit infer --checkpoint RUN/last.pt --source 0 --out outputs/camera              # camera 0, until Ctrl-C

The model is rebuilt from the config stored in the checkpoint (only detkit's own builders may be
named there) and images are resized with that config's test transform (``detkit.load``, the same
path). ``--set KEY=VALUE`` (repeatable) changes that config's test-time settings first, e.g.
OverFeat's ``method.model.merge=nms`` or Faster R-CNN's ``method.model.box_nms_thresh=0.5`` (the
weights must still fit). Outputs in ``--out``:

* ``<name>.jpg`` per image: the detections drawn (``detkit.visualization.draw``);
* ``detections.json``: the images' detections file (``detkit.evaluation.detections``), one entry
  per box ``{"image_id", "category_id", "bbox": [x, y, w, h] (original pixels), "score",
  "file_name"}``, ``image_id`` the position in the input list and ``file_name`` the image's base
  name, so ``detkit eval --detections`` can match the entries to a data set's images by name;
* ``<name>.mp4`` and ``<name>.jsonl`` per video or camera (``detkit.video``): the video with its
  detections drawn (same size and frame rate) and one JSON line of detections per processed frame.

Unreadable images and videos are skipped with a warning; no input at all, or a checkpoint that
cannot be read or does not fit its config, stop with a one-line error (exit status 2).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import warnings
from pathlib import Path


import numpy as np
from tqdm.auto import tqdm

from detkit.cli.speed_options import add_speed_options

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class InferError(ValueError):
    """A problem with the command's inputs (reported as one line, exit status 2)."""


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """``(images, videos)`` from files, folders (their image and video files, sorted) and glob
    patterns, deduplicated. A file named explicitly is a video by its extension, else an image
    (tried whatever its extension)."""
    from detkit.video import VIDEO_EXTENSIONS

    known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    found: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in known)
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(item):
            found += sorted(Path(f) for f in glob.glob(os.path.expanduser(item), recursive=True)
                            if Path(f).is_file() and Path(f).suffix.lower() in known)
        else:
            raise InferError(f"{item}: no such file or folder")
    seen, unique = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    if not unique:
        raise InferError(f"no images or videos found in {' '.join(inputs)} (looked for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}; {', '.join(sorted(VIDEO_EXTENSIONS))})")
    videos = [f for f in unique if f.suffix.lower() in VIDEO_EXTENSIONS]
    return [f for f in unique if f not in videos], videos


def _out_names(paths: list[Path]) -> list[str]:
    """``<stem>.jpg`` per input; repeated stems (same name in two folders) get ``_2``, ``_3``..."""
    counts: dict[str, int] = {}
    names = []
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
        names.append(f"{p.stem}.jpg" if counts[p.stem] == 1 else f"{p.stem}_{counts[p.stem]}.jpg")
    return names


def _read(paths):
    """Read the images; returns [(index, (H, W, 3) uint8 image)] and the unreadable paths."""
    from detkit.data.images import read_image

    items, skipped = [], []
    for i, path in paths:
        try:
            items.append((i, read_image(path)))
        except (OSError, ValueError) as e:
            warnings.warn(f"{path}: skipped, cannot read it as an image ({e})", stacklevel=2)
            skipped.append(path)
    return items, skipped


def run(args: argparse.Namespace) -> dict:
    from detkit.predictor import load

    if not args.inputs and args.source is None:
        raise InferError("give images, folders or videos, or a camera with --source N")
    try:
        predictor = load(args.checkpoint, args.device, args.override, batch_size=args.batch_size, svd=args.svd,
                         fast=args.fast, int8=args.int8)  # a bad checkpoint is named first
    except (ValueError, RuntimeError) as e:
        for flag, source in (("svd", "compress_region_head"), ("int8", "quantize_linear_layers"), ("int8", "int8=True")):
            if getattr(args, flag) and source in str(e):
                raise InferError(f"--{flag}: {e}") from None
        raise
    paths, videos = collect_inputs(args.inputs) if args.inputs else ([], [])
    if args.int8_trunk is not None:
        _quantize_trunk(predictor, paths, args.int8_trunk)
    if args.compile:
        from detkit.engine.compile import compile_model

        compile_model(predictor.model, backend=args.compile_backend)  # in place; first batches compile
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = _images(predictor, paths, out_dir, args) if paths else {"images": 0, "detections": 0, "skipped": []}
    sources = [*videos, *([int(args.source)] if args.source is not None else [])]
    result["videos"] = _videos(predictor, sources, out_dir, args, result["skipped"])
    if result["images"] == 0 and not result["videos"]:
        raise InferError(f"none of the {len(paths) + len(sources)} inputs could be read as an image or a video")
    skipped = result["skipped"]
    print(f"{result['images']} image(s), {result['detections']} detection(s), {len(result['videos'])} video(s) "
          f"-> {out_dir}" + (f"; skipped {len(skipped)} unreadable: {', '.join(map(str, skipped))}" if skipped else ""))
    return result


def _quantize_trunk(predictor, paths: list[Path], n: int) -> None:
    """``--int8-trunk N``: calibrate the int8 trunk on the first ``n`` readable input images."""
    if predictor.device.type != "cpu":
        raise InferError(f"--int8-trunk quantises for the CPU; the device is {predictor.device} (use --device cpu)")
    images = []
    for i, path in enumerate(paths):
        if len(images) == n:
            break
        images += [im for _, im in _read([(i, path)])[0]]
    if not images:
        raise InferError("--int8-trunk calibrates on the input images: give images (videos and cameras are not "
                         "used for it)" + (f"; none of the {len(paths)} could be read" if paths else ""))
    try:
        convs = predictor.quantize_trunk(images)
    except (ValueError, RuntimeError) as e:
        raise InferError(f"--int8-trunk: {e}") from None
    print(f"--int8-trunk: {convs} convolutions in int8, calibrated on {len(images)} image(s)")


def _images(predictor, paths: list[Path], out_dir: Path, args) -> dict:
    """Pictures and detections.json for the images (the predictor, in batches)."""
    from detkit.utils.atomic import atomic_write_text
    from detkit.visualization.draw import draw_detections, save_image

    out_names = _out_names(paths)
    entries, skipped, written = [], [], 0
    indexed = list(enumerate(paths))
    with tqdm(total=len(paths), desc="infer", unit="img") as bar:
        for start in range(0, len(indexed), args.batch_size):
            chunk = indexed[start : start + args.batch_size]
            items, bad = _read(chunk)
            skipped += bad
            if items:
                found = predictor([im for _, im in items], args.score_threshold)
                for (i, image), det in zip(items, found):
                    order = np.argsort(-det.scores, kind="stable")[: args.max_detections]
                    boxes, scores, labels = det.boxes[order], det.scores[order], det.labels[order]
                    picture = draw_detections(image, boxes, labels, scores, predictor.class_names,
                                              score_threshold=args.score_threshold)
                    save_image(out_dir / out_names[i], picture)
                    written += 1
                    for b, sc, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
                        entries.append({"image_id": i, "category_id": int(predictor.category_ids[lab]),
                                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(sc),
                                        "file_name": paths[i].name})
            bar.update(len(chunk))
    if written:
        atomic_write_text(out_dir / "detections.json", json.dumps(entries))
    return {"images": written, "detections": len(entries), "skipped": [str(p) for p in skipped]}


def _videos(predictor, sources: list, out_dir: Path, args, skipped: list[str]) -> list[dict]:
    """``<stem>.mp4`` (drawn) and ``<stem>.jsonl`` (detections per frame) for each video or camera."""
    from detkit.video import VideoError, detect_video

    done = []
    for source in sources:
        stem = f"camera{source}" if isinstance(source, int) else Path(source).stem
        try:
            info = detect_video(predictor, source, out_dir / f"{stem}.mp4", out_dir / f"{stem}.jsonl",
                                stride=args.stride, score_threshold=args.score_threshold, max_frames=args.max_frames)
        except VideoError as e:
            warnings.warn(f"{source}: skipped, cannot read it as a video ({e})", stacklevel=2)
            skipped.append(str(source))
            continue
        done.append({"source": str(source), **info})
    return done


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a detkit checkpoint (RUN/last.pt)")
    p.add_argument("inputs", nargs="*", help="image or video files, folders, glob patterns")
    p.add_argument("--out", required=True, help="output folder for pictures, detections.json, videos")
    p.add_argument("--source", type=int, default=None, metavar="N", help="also read camera N (e.g. 0) until Ctrl-C")
    p.add_argument("--stride", type=int, default=1, help="videos: detect on every N-th frame (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="videos and cameras: stop after this many frames")
    p.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this")
    p.add_argument("--max-detections", type=int, default=100, help="most detections kept per image")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the trunk, RPN head and region head (detkit.engine.compile); "
                        "pays off over many images of similar size")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend with --compile")
    add_speed_options(p)
    p.add_argument("--set", dest="override", action="append", default=[], metavar="KEY=VALUE",
                   help="change the checkpoint's stored config before building the model, e.g. "
                        "method.model.merge=nms (OverFeat) or method.model.box_score_thresh=0.3; repeatable")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.max_detections < 1 or args.stride < 1:
        p.error("--batch-size, --max-detections and --stride must be at least 1")
    if args.int8_trunk is not None and args.int8_trunk < 1:
        p.error(f"--int8-trunk: N must be at least 1, got {args.int8_trunk}")
    return args


def main(argv=None) -> int:
    from detkit.engine.checkpoint import CheckpointError
    from detkit.engine.compile import CompileError
    from detkit.video import VideoError

    args = parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        run(args)
    except (InferError, CheckpointError, CompileError, VideoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
