"""Which process this is in a ``torchrun`` job, and the few collectives a run needs.

Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) the default process group is
initialised here unless the caller did it: NCCL when CUDA is available, with
one GPU per local rank (``LOCAL_RANK``), gloo otherwise. Without ``torchrun``
everything degrades to one process and the collectives do nothing.

Shards are dealt to ranks round-robin over the fixed shard grid: shard ``c``
goes to global rank ``c % world_size``, so the shares are disjoint, cover
every item, and the files do not depend on the world size.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class RankContext:
    """This process's place in the job: global ``rank`` of ``world_size``, and ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, shard: int) -> bool:
        """Whether shard number ``shard`` is this rank's to compute."""
        return shard % self.world_size == self.rank

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (a collective: every rank must call it)."""
        if not self.distributed:
            return ok
        flag = torch.tensor([0.0 if ok else 1.0], device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return bool(flag.item() == 0)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def local_device() -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Put the model there before :func:`attrib.explain_dataset` when running on
    several GPUs (``attrib run`` does it for you).
    """
    if torch.cuda.is_available():
        return torch.device("cuda", _env_int("LOCAL_RANK", 0))
    return torch.device("cpu")


def rank_context() -> RankContext:
    """This process's :class:`RankContext`, initialising the process group under ``torchrun`` if needed.

    Raises:
        ValueError: ``WORLD_SIZE`` > 1 without the rendezvous variables
            ``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``).
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return RankContext(dist.get_rank(), dist.get_world_size(), local_rank)
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return RankContext()
    if not dist.is_available():  # pragma: no cover - torch builds without distributed support
        raise ValueError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} is not; launch the job with torchrun"
        )
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                "use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    dist.init_process_group(backend=backend, init_method="env://")
    atexit.register(_destroy)
    return RankContext(dist.get_rank(), dist.get_world_size(), local_rank)


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where tensors for collectives must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_across_ranks(tensor: Tensor, op: Literal["sum", "max", "min"] = "sum") -> Tensor:
    """``tensor`` combined element-wise over every rank of the job (a new tensor; the input is left alone).

    Every rank must call it with a tensor of the same shape and dtype; outside a
    distributed job it returns a copy of ``tensor``.

    Example:
        >>> hits = reduce_across_ranks(torch.tensor([my_hits, my_count]))  # totals on every rank
    """
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"op must be 'sum', 'max' or 'min', got {op!r}")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a Tensor, got {type(tensor).__name__}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor.clone()
    work = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(work, op=ops[op])
    return work.to(tensor.device)
