"""Adaptive training strategy ("adaptive prioritization"): how the exits' losses are weighted.

All exits train jointly on ``sum_k w_k(t) * CE(exit_k)``. Early in training the shared adapters
are pulled hardest by the shallow exits, whose features are the least separable; the paper's
remedy is to let the deep exit lead first and bring the shallow exits in as training proceeds.
The rule here, with training progress ``t`` in [0, 1] and K exits:

    w_k(t) = K * a_k / sum_j a_j,   a_k = ((k + 1) / K) ** (gamma * (1 - t))

``gamma`` sets how strongly the deep exits lead at the start (t = 0); at the end all weights are
1. ``gamma = 0`` gives fixed equal weights (the ablation). Optional self-distillation adds
``distill_weight * T^2 * KL(softmax(z_K / T) || softmax(z_k / T))`` for every early exit, with the
last exit detached as the teacher.

``criterion`` is each exit's loss (plain cross-entropy by default). The recipe's switches
(training/augment.py) make it label-smoothed, or soft-target cross-entropy when mixup / cutmix turn
the targets into soft labels [N, C]; the distillation term's teacher is the last exit, never the
targets, so it is the same with soft labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class AdaptivePrioritization:
    gamma: float = 2.0
    distill_weight: float = 0.0
    temperature: float = 2.0
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(default=F.cross_entropy, repr=False)

    def __post_init__(self) -> None:
        if self.gamma < 0 or self.distill_weight < 0 or self.temperature <= 0:
            raise ValueError("gamma and distill_weight must be >= 0, temperature > 0")

    def weights(self, progress: float, num_exits: int) -> torch.Tensor:
        t = min(max(progress, 0.0), 1.0)
        a = (torch.arange(1, num_exits + 1, dtype=torch.float64) / num_exits) ** (self.gamma * (1.0 - t))
        return (num_exits * a / a.sum()).float()

    def __call__(
        self, logits: list[torch.Tensor], targets: torch.Tensor, progress: float
    ) -> tuple[torch.Tensor, list[float]]:
        """Total loss and each exit's ``criterion`` (for logging); ``targets``: class ids [N] or soft labels [N, C]."""
        ce = torch.stack([self.criterion(z, targets) for z in logits])
        loss = (self.weights(progress, len(logits)).to(ce.device) * ce).sum()
        if self.distill_weight > 0 and len(logits) > 1:
            loss = loss + self.distill_weight * self.distillation(logits)
        return loss, ce.detach().tolist()

    def distillation(self, logits: list[torch.Tensor]) -> torch.Tensor:
        t = self.temperature
        teacher = F.softmax(logits[-1].detach() / t, dim=-1)
        kl = [F.kl_div(F.log_softmax(z / t, dim=-1), teacher, reduction="batchmean") for z in logits[:-1]]
        return t * t * torch.stack(kl).sum()

    def to_dict(self) -> dict:
        return {"gamma": self.gamma, "distill_weight": self.distill_weight, "temperature": self.temperature}
