"""The benchmark's on-screen tables (``detkit benchmark``): one block per model and measurement,
or with ``--methods`` one row per method; phases as median ms, the machine and commit above, the
run's notes below. The JSON (``--out``) holds every field; these are for reading at a terminal."""
from __future__ import annotations

from detkit.analysis.benchmarking.benchmark import INFER_PHASES, TRAIN_PHASES


def _fmt(stats: dict) -> str:
    return f"{stats['median']:9.1f} [{stats['q1']:.1f}-{stats['q3']:.1f}]"


def _machine_line(result: dict) -> str:
    s, m, git = result["settings"], result["machine"], result["git"]
    return (f"device {s['device']} ({m['gpu'] or m['cpu']}, {m['cpu_cores']} cores, "
            f"{m['torch_threads']} threads); torch {m['torch']}, torchvision {m['torchvision']}; "
            f"commit {(git['commit'] or 'unknown')[:12]}{' (dirty)' if git['dirty'] else ''}")


def format_methods_table(result: dict) -> str:
    """``--methods``: one row per method (test time per image), phases as median ms, footnotes."""
    s = result["settings"]
    lines = [f"test time per image: {', '.join(s['methods'])} / {s['backbone']} (width {s['width'] or 1.0}), "
             f"input {s['input']}, batch 1, {s['precision']}{', channels_last' if s['channels_last'] else ''}; "
             f"warmup {s['warmup']}, repeats {s['repeats']}",
             _machine_line(result), ""]
    header = (f"{'method':<12} {'proposals':<18} {'ms/img median [IQR]':>28} {'x fastest':>9} {'RoIs/img':>9} "
              f"{'dets/img':>8} {'peak MB':>8}  phases (median ms)")
    lines += [header, "-" * len(header)]
    for name, res in result["results"].items():
        r = res["infer_latency"]
        text = " ".join(f"{p}={r['phases_ms'][p]['median']:.1f}" for p in (*INFER_PHASES, "other"))
        lines.append(f"{name:<12} {result['methods'][name]['proposals']:<18} {_fmt(r['total_ms']):>28} "
                     f"{result['relative'][name]:9.2f} {r['rois_per_image']:9.1f} "
                     f"{r.get('detections_per_image', 0.0):8.1f} {r['peak_memory_mb']:8.0f}  {text}")
    for name, res in result["results"].items():
        r = res.get("infer_throughput")
        if r is not None and r["batch_size"] > 1:
            lines.append(f"{name:<12} throughput (b{r['batch_size']}): {r['images_per_s']:.2f} img/s")
    lines.append("")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def format_table(result: dict) -> str:
    """The on-screen table: one block per model and measurement, phases as median ms."""
    if result["settings"].get("methods"):
        return format_methods_table(result)
    s = result["settings"]
    lines = [f"{s['method']} / {s['backbone']} (width {s['width'] or 1.0}), input {s['input']}, "
             f"batch {s['batch']}, {s['precision']}{', channels_last' if s['channels_last'] else ''}, "
             f"RoI {s['roi_pool_mode']}{', compiled (' + s['compile'] + ')' if s.get('compile') else ''}; "
             f"warmup {s['warmup']}, repeats {s['repeats']}",
             _machine_line(result), ""]
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
