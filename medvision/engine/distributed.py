"""Process-group set-up for ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 tracks, checkpoints and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def autocast_for(device: torch.device | str, amp: str = "off") -> contextlib.AbstractContextManager:
    """The training precision rule of both tasks: bf16 autocast on CUDA with ``amp`` ``auto`` or ``bf16``; nothing
    otherwise (on the CPU always nothing). The classifier's and the detector's steps, and the detector's inference,
    use this one."""
    if torch.device(device).type == "cuda" and amp in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is an error the caller reports."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from medvision.errors import ConfigError

        raise ConfigError("train.device", "cuda requested but no CUDA device is visible", "use device: auto or cpu")
    return torch.device("cuda", local_rank)


def init_distributed(preference: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Send a picklable object from rank 0 to every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
