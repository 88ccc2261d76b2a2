"""Several processes through ``torchrun`` (torch DDP): set-up, rank helpers, wrapping, gathering.

``torchrun --nproc_per_node=G tools/train.py ...`` starts ``G`` processes with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``init_distributed``
reads them and joins the process group (NCCL on GPUs, gloo on the CPU). A plain
``python tools/train.py`` sees none of them and runs as rank 0 of 1. The batch size in the
configs is **per process**; the global batch is ``batch_size * world_size`` (docs/training.md).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``(0, 0, 1)`` without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def require_one_process(what: str) -> None:
    """Refuse to run ``what`` under torchrun (checked from ``WORLD_SIZE``: it may be called before
    the process group is joined), where every rank would redo it and write the same files."""
    if env_world()[2] > 1:
        raise ValueError(f"{what} runs in one process; start it without torchrun")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> this process's GPU when CUDA is available (``LOCAL_RANK`` picks it), else CPU."""
    _, local, _ = env_world()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} requested but CUDA is not available; use device=cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: torch.device, *, timeout_s: float = 1800.0) -> bool:
    """Join the process group when started by torchrun; returns whether DDP is active."""
    _, _, world = env_world()
    if world <= 1 or is_initialized():
        return is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes checkpoints, logs, TensorBoard and result files."""
    return get_rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when DDP is active, else ``model`` unchanged."""
    if not is_initialized():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def all_reduce_max(value: float, device: torch.device) -> float:
    """Maximum of a scalar over all processes (e.g. "did any rank see a non-finite loss")."""
    if not is_initialized():
        return float(value)
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars over processes, for logging the same numbers everywhere."""
    if not is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def gather_to_main(obj: Any) -> list[Any] | None:
    """Collect one picklable object from every process on rank 0 (``None`` on the others)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
