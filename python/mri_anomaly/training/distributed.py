"""``torchrun`` support: process-group set-up from the environment and small collective helpers.

``torchrun --nproc-per-node N -m mri_anomaly train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` starts the process group (``gloo`` on CPU, ``nccl`` on CUDA) and picks the
rank's device. Every helper is a no-op in a single process, so the trainer and the scorer have one
code path.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from mri_anomaly.errors import UserInputError

__all__ = [
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "barrier",
    "all_gather_objects",
    "all_reduce_any",
    "check_replicas_identical",
    "broadcast_buffers",
]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes checkpoints, logs and merged tables."""
    return rank() == 0


def init_distributed(device: str = "cpu") -> torch.device:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1) and return this rank's device.

    Args:
        device: ``"cpu"`` or ``"cuda"``; with CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError("--device cuda was asked for but no CUDA device is available")
        target = torch.device("cuda", local_rank if env_world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(target)
    else:
        target = torch.device("cpu")
    if env_world > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return target


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_any(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of rank ``src`` to all ranks (DDP does this at each forward, but the buffers updated
    *during* the last forward of a phase, e.g. BatchNorm running statistics, still differ per rank)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def check_replicas_identical(module: torch.nn.Module, what: str, device: torch.device | str = "cpu") -> None:
    """Raise when ranks hold different parameters or buffers (a data-dependent init that was not all-reduced).

    DDP broadcasts rank 0's parameters once at construction, which would silently hide per-rank init;
    this check makes such a bug loud instead.
    """
    if not is_distributed():
        return
    local = torch.stack(
        [
            t.detach().double().sum().to(device)
            for t in list(module.parameters()) + list(module.buffers())
            if t.is_floating_point()
        ]
        or [torch.zeros((), dtype=torch.float64, device=device)]
    )
    reference = local.clone()
    dist.broadcast(reference, src=0)
    differs = torch.tensor(
        [0.0 if torch.allclose(local, reference, rtol=1e-6, atol=1e-8) else 1.0], device=device
    )
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item() > 0:
        raise RuntimeError(
            f"after {what}, the processes hold different weights or buffers: a data-dependent initialisation "
            "was computed per process instead of all-reduced (it must be identical on every rank before DDP wrapping)"
        )
