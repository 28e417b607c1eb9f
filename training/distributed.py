"""Data-parallel training with the engine users already have: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc-per-node N -m dynadapter.cli train ...`` runs N processes; each takes every N-th
image of the same global batch (a DistributedSampler: same seed, same shuffling on every rank),
DDP averages the gradients, so N processes follow the single-process run on the same global batch. Rank 0 alone
writes the run directory.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dynadapter.cpu import cpu_info
from dynadapter.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: Any) -> Any:
        """This rank's share of a sequence of indices (every size-th, from its rank)."""
        return indices[self.rank :: self.size]

    def union(self, parts: dict[int, str]) -> dict[int, str]:
        """Merge per-rank dicts (files found unusable, each rank on its share) into one on every rank."""
        if self.size == 1:
            return parts
        gathered: list[dict[int, str]] = [{} for _ in range(self.size)]
        dist.all_gather_object(gathered, parts)
        return {k: v for part in gathered for k, v in part.items()}

    def mean(self, values: list[float]) -> list[float]:
        """Average per-rank numbers (losses) across ranks, for logging."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.size).tolist()


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up (NCCL when training on GPUs, gloo on CPUs); a single
    process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def resolve_device(name: str) -> torch.device:
    """``auto``: this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is usable, else the CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return device


def device_name(device: torch.device, cpuinfo: str | None = None) -> str:
    """What ``device`` is, for results pages: the GPU's name (``torch.cuda.get_device_name``), or the
    CPU's model name (/proc/cpuinfo) with the threads torch uses, e.g. "AMD EPYC, 2 threads"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpu_info(cpuinfo)
    model = cpu.model or platform.processor() or platform.machine() or "CPU"
    threads = torch.get_num_threads()
    return f"{model}, {threads} thread{'s' if threads != 1 else ''}"


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if world.size == 1:
        return model
    if device.type == "cuda":
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device])
    return torch.nn.parallel.DistributedDataParallel(model)


def shutdown(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
