"""The test tail every training recipe ends with: predict the test split, score it, write the files.

``test_and_report`` runs the trained detector over the test split (``detkit.engine.evaluator``:
boxes back in each image's pixels; given proposals ride in the dataset), scores VOC07, VOC10+ and
COCO, and writes ``run_dir/detections.json`` and ``run_dir/metrics.json``. ``metrics.json`` holds
the scores, the recipe's own facts (iterations, training seconds, stages or steps, ...), the test
cost and ``run_facts`` (machine, commit):

* ``test_seconds_per_image``: wall time of the whole test pass / images (data loading in
  ``test.num_workers`` processes, host-to-device copy, the model's forward *with* its
  post-processing, conversion of the boxes to the original image);
* ``test_model_seconds_per_image``: the model call alone (GPU-synchronised).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from detkit.engine import distributed as ddp
from detkit.engine.evaluator import score_detections, timed_predict, write_json
from detkit.engine.precision import resolve_amp
from detkit.utils.provenance import run_facts


def test_and_report(model: torch.nn.Module, test_data, test_set, *, run_dir: str | Path, device: torch.device,
                    test_cfg: dict[str, Any], facts: dict[str, Any], amp: str = "none",
                    channels_last: bool = False, progress: bool = True,
                    default_batch_size: int = 2) -> dict[str, Any] | None:
    """Predict, score and write the run's test files (module docstring); returns the scores on the
    main process (``None`` on the others).

    Args:
        test_data: the test split's ``DetectionData``; test_set: its ``DetectionDataset`` (with
            proposals for the methods that take them).
        test_cfg: the run config's ``test`` node (``batch_size``, ``num_workers``, ``coco``).
        facts: the recipe's entries of ``metrics.json`` (iterations, seconds, ...).
    """
    run_dir = Path(run_dir)
    amp = resolve_amp(amp, device)  # "auto" made concrete once: metrics.json records what the test used
    dets, timing = timed_predict(model, test_set, device=device,
                                 batch_size=int(test_cfg.get("batch_size", default_batch_size)),
                                 num_workers=int(test_cfg.get("num_workers", 0)), amp=amp,
                                 channels_last=channels_last, progress=progress, desc="test")
    if not ddp.is_main():
        return None
    scores = score_detections(dets, test_data, coco=bool(test_cfg.get("coco", True)))
    from detkit.evaluation.detections import save_detections

    save_detections(run_dir / "detections.json", dets, test_data)
    write_json(run_dir / "metrics.json", {
        "data": test_data.name, "num_images": len(test_data), **facts,
        "test_seconds_per_image": timing["seconds_per_image"],
        "test_model_seconds_per_image": timing["model_seconds_per_image"], "test_amp": amp,
        **run_facts(device), **scores})
    tqdm.write(f"test mAP: VOC07 {scores['voc07']['mAP']}  VOC12 {scores['voc12']['mAP']}  "
               f"-> {run_dir / 'metrics.json'}")
    return scores
