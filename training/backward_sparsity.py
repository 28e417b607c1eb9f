"""Backward sparsity: at every step a random subset of each trainable gradient is zeroed.

The paper motivates it by generalisation: the shallow stages, trained by every exit's loss, fit
their training images fast; dropping a random fraction ``rate`` of gradient entries (a fresh mask
per step and per tensor) keeps any single exit from dictating the shared PETL weights. With
``rescale`` the kept entries are divided by ``1 - rate`` so the expected gradient is unchanged.
``rate = 0`` switches it off.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch


@dataclass
class BackwardSparsity:
    rate: float = 0.1
    rescale: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"backward sparsity rate must be in [0, 1), got {self.rate}")

    @torch.no_grad()
    def apply(self, parameters: Iterable[torch.nn.Parameter], generator: torch.Generator | None = None) -> None:
        """Zero a random ``rate`` fraction of each gradient in place (call between backward and step)."""
        if self.rate == 0:
            return
        for p in parameters:
            if p.grad is None:
                continue
            keep = torch.rand(p.grad.shape, generator=generator, device=p.grad.device) >= self.rate
            p.grad.mul_(keep)
            if self.rescale:
                p.grad.div_(1.0 - self.rate)

    def to_dict(self) -> dict:
        return asdict(self)
