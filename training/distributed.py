"""Data-parallel training with the engine users already have: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc-per-node N -m training.cli train ...`` runs N processes; each takes every N-th
image of the same global batch (same seed, same shuffling on every rank), DDP averages the
gradients, so N processes follow the single-process run on the same global batch. Rank 0 alone
writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch."""
        return indices[self.rank::self.size]

    def mean(self, values: list[float]) -> list[float]:
        """Average per-rank numbers (losses) across ranks, for logging."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.size).tolist()


def init_world() -> World:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    if world.size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
