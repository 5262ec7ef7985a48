"""Data-parallel training on PyTorch's own engine (``torch.distributed`` + DDP), one process per rank.

Launch with ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``); :func:`init_distributed` reads those variables and starts the process group. The
trainer runs on the CPU, so the backend is ``gloo``.

The data-parallel contract used by ``train.py``: every rank draws the *same* global batch from the
same seeded generator (so the data order, and the generator state saved in checkpoints, do not
depend on the number of ranks), keeps its slice (:func:`shard`), and normalises its losses by the
*global* batch size. DDP averages gradients over ranks, so :func:`rank_scale` multiplies each rank's
loss by the world size: the averaged gradient is then the gradient of the global batch loss, and a
run on N ranks follows the same trajectory as a 1-process run with the same global batch (up to the
order of floating-point sums).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    """Rank and world size of this process (``rank=0, world=1`` without a process group)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and logs (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(backend: str = "gloo") -> DistInfo:
    """Start the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); else a no-op.

    Args:
        backend: ``gloo`` (CPU tensors, the trainer's case) or ``nccl`` (CUDA tensors).

    Returns:
        This process's :class:`DistInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch with "
                               "`torchrun --nproc_per_node=N train.py ...`")
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size())


def shutdown(info: DistInfo) -> None:
    """Tear the process group down (after a final barrier, so no rank exits while others still talk)."""
    if info.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(items: Sequence, info: DistInfo) -> list:
    """This rank's slice of a global batch: items ``rank, rank + world, ...`` (disjoint, covering)."""
    return list(items[info.rank::info.world])


def all_reduce_sum(values: Tensor, info: DistInfo) -> Tensor:
    """Sum of ``values`` over ranks (no gradient; the tensor itself is left unchanged)."""
    out = values.detach().clone()
    if info.active:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def rank_scale(info: DistInfo) -> float:
    """Factor on each rank's (globally normalised) loss that makes DDP's gradient *mean* a *sum*."""
    return float(info.world)


@contextmanager
def main_first(info: DistInfo):
    """Run the block on rank 0 first, then on the other ranks (one-time work: building or caching
    a zoo, so ranks never write the same file at once)."""
    if info.active and not info.is_main:
        dist.barrier()
    yield
    if info.active and info.is_main:
        dist.barrier()


def barrier(info: DistInfo) -> None:
    """Wait for every process of a distributed run (nothing in a single-process one)."""
    if info.active:
        dist.barrier()


def check_ranks_agree(module: nn.Module, info: DistInfo, atol: float = 0.0) -> float:
    """Largest difference between any rank's parameters and the element-wise extremes over ranks.

    Raises:
        RuntimeError: ranks whose parameters differ by more than ``atol`` (a broken data-parallel
            step: a rank that skipped a gradient all-reduce, or stepped on different data).
    """
    if not info.active:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    spread = float((hi - lo).abs().max()) if flat.numel() else 0.0
    if spread > atol:
        raise RuntimeError(f"rank {info.rank}: parameters differ across the {info.world} ranks by up to "
                           f"{spread:.3e} (> {atol:g})")
    return spread
