"""DistributedDataParallel plumbing: one process per device, started by ``torchrun`` (or any launcher that
sets the standard ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` variables).

NCCL is used on CUDA and gloo on CPU. A single process without those variables runs unchanged (world size 1).
Only rank 0 writes files and evaluates; the other ranks wait at a barrier.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job and which device it drives."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"Environment variable {name} must be an integer, got {value!r}") from exc


def init_distributed(use_cuda: bool | None = None) -> DistContext:
    """Join the process group described by the environment (or return a single-process context).

    ``use_cuda=None`` means "CUDA when available". Calling it again in an already initialised process reuses
    the existing group.
    """
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if use_cuda:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
        logger.info("Joined %s process group: rank %d of %d on %s", backend, rank, world_size, device)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (safe to call in a single-process run)."""
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (checkpoints and evaluation use it)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without a process group)."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_ranks_agree(flag: torch.Tensor, ctx: DistContext) -> bool:
    """True only if ``flag`` (a boolean scalar tensor) is true on every rank, so all ranks take the same
    branch: a decision taken on one rank alone would leave the others waiting in the next collective."""
    if not ctx.is_distributed:
        return bool(flag)
    value = flag.detach().to(torch.float32).reshape(1)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def broadcast_parameters(parameters: Iterable[nn.Parameter], ctx: DistContext) -> None:
    """Copy rank 0's values of parameters that live outside the DDP wrapper (DDP only syncs the model)."""
    if not ctx.is_distributed:
        return
    with torch.no_grad():
        for param in parameters:
            dist.broadcast(param.data, src=0)


def average_gradients(parameters: list[nn.Parameter], ctx: DistContext) -> None:
    """All-reduce gradients of parameters that live outside the DDP wrapper (e.g. center-loss centres)."""
    if not ctx.is_distributed:
        return
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(ctx.world_size)


def parameter_checksum(model: nn.Module) -> torch.Tensor:
    """One float64 sum per parameter tensor: cheap to all-gather, and any drift between ranks shows up in
    it."""
    with torch.no_grad():
        return torch.stack([p.detach().double().sum() for p in unwrap_model(model).parameters()]).cpu()
