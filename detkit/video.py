"""Detect objects in a video file or a camera stream, frame by frame (``detkit infer video.mp4``).

``detect_video(predictor, source, out_video, out_jsonl)`` reads frames with OpenCV
(``cv2.VideoCapture``: a file, or a camera index such as ``0``), runs the :class:`~detkit.predictor.Predictor`
on every ``stride``-th frame, and writes

* ``out_video``: the video with the detections drawn, at the source's size and frame rate (frames
  between two processed ones show the last detections, so the video keeps its length);
* ``out_jsonl``: one JSON line per processed frame, ``{"frame", "time_s", "detections": [{"bbox":
  [x, y, w, h], "score", "category_id", "name"}]}`` in the frame's pixels.

A progress bar shows the frames per second. A camera runs until ``max_frames`` or Ctrl-C.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "VideoError", "detect_video"]

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


class VideoError(ValueError):
    """A video (or camera) that cannot be opened or read; the message names it."""


def detect_video(predictor, source: str | os.PathLike | int, out_video: str | os.PathLike,
                 out_jsonl: str | os.PathLike, *, stride: int = 1, score_threshold: float = 0.5,
                 max_frames: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``predictor`` over a video or camera (module docstring).

    Args:
        predictor: a :class:`~detkit.predictor.Predictor` (``detkit.load``).
        source: a video file, or a camera index (an ``int``).
        stride: process every ``stride``-th frame (1: all).
        score_threshold: keep and draw detections scoring at least this.
        max_frames: stop after this many frames read (``None``: the whole video; a camera: until Ctrl-C).

    Returns:
        ``{"frames", "processed", "detections", "fps", "size", "seconds"}``.

    Raises:
        VideoError: the source cannot be opened, or yields no frame.
    """
    import time

    import cv2
    from tqdm.auto import tqdm

    from detkit.visualization.draw import draw_detections

    if stride < 1:
        raise VideoError(f"stride must be at least 1, got {stride}")
    name = f"camera {source}" if isinstance(source, int) else str(source)
    cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
    if not cap.isOpened():
        raise VideoError(f"{name}: cannot open it as a video" + ("" if isinstance(source, int) else
                                                                  " (not a video, or a codec OpenCV lacks)"))
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 25.0  # cameras and some files report 0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not isinstance(source, int) else 0
    if max_frames is not None:
        total = min(total, max_frames) if total > 0 else max_frames
    writer, count, processed, found = None, 0, 0, 0
    last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    Path(out_jsonl).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = tqdm(total=total or None, desc=f"video {Path(name).name}", unit="frame", disable=not progress)
    try:
        with open(out_jsonl, "w") as lines:
            while max_frames is None or count < max_frames:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = cv2.VideoWriter(str(out_video), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise VideoError(f"{out_video}: cannot write a video there")
                if count % stride == 0:
                    dets = predictor(rgb, score_threshold=score_threshold)
                    last = (dets.boxes, dets.labels, dets.scores)
                    entries = [{"bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                "score": float(s), "category_id": int(predictor.category_ids[int(k)]),
                                "name": predictor.class_names[int(k)]}
                               for b, s, k in zip(dets.boxes, dets.scores, dets.labels)]
                    lines.write(json.dumps({"frame": count, "time_s": round(count / fps, 4), "detections": entries}) + "\n")
                    processed += 1
                    found += len(entries)
                picture = draw_detections(rgb, *last, predictor.class_names) if last is not None else rgb
                writer.write(np.ascontiguousarray(picture[:, :, ::-1]))
                count += 1
                bar.update(1)
    except KeyboardInterrupt:  # a camera stream ends with Ctrl-C; what was written stays
        pass
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if count == 0:
        raise VideoError(f"{name}: no frame could be read")
    return {"frames": count, "processed": processed, "detections": found, "fps": fps,
            "size": [int(rgb.shape[1]), int(rgb.shape[0])], "seconds": time.perf_counter() - start}
