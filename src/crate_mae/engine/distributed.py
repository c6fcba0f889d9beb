"""torchrun integration: ``env://`` process groups (nccl on CUDA, gloo on CPU) and rank helpers.

A plain ``python`` launch is a world of one; nothing here needs torchrun to be present.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist

from ..utils import default_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device | str | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).

    Each process uses ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU with the gloo backend. More
    processes per node than visible GPUs is refused with a ValueError (CUDA would say "invalid device ordinal").
    """

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        index = local_rank if world > 1 else (device.index or 0)
        visible = torch.cuda.device_count()
        if index >= visible:
            raise ValueError(
                f"process with LOCAL_RANK {local_rank} needs GPU cuda:{index} but this node has "
                f"{visible} visible GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"
                f"); start at most {visible} processes per node (torchrun --nproc_per_node={visible})"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in a world of one)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(error: str | None, info: DistInfo) -> str | None:
    """Every rank learns whether any rank failed: returns the first rank's error message (or None).

    Use it instead of a barrier after work that only some ranks do (rank 0 writing files), so that a failure there
    stops every rank instead of leaving the others blocked in the next collective."""
    if not info.enabled:
        return error
    errors: list[Any] = [None] * info.world_size
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e is not None), None)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_model(model: torch.nn.Module, info: DistInfo, compile: bool = False) -> torch.nn.Module:
    """The module the training loop calls: ``model`` in DDP under torchrun, then ``torch.compile`` when asked.
    Checkpoints keep saving ``model`` itself, so their keys carry neither wrapper's prefix.

    No buffer sync before each forward (``broadcast_buffers=False``): the only buffers are the fixed sin-cos tables,
    identical on every rank, which DDP would otherwise re-send before every forward."""

    net = model
    if info.enabled:
        DDP = torch.nn.parallel.DistributedDataParallel
        # torch >= 2.14 renames the flag (and warns about the old name)
        new_name = "forward_sync_buffers" in inspect.signature(DDP).parameters
        no_buffer_sync: dict[str, Any] = {"forward_sync_buffers" if new_name else "broadcast_buffers": False}
        net = DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None, **no_buffer_sync)
    return cast(torch.nn.Module, torch.compile(net)) if compile else net  # compiling a module gives a module
