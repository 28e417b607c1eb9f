"""LoRA (Hu et al. 2021): a trainable low-rank update beside frozen linear layers (qkv by default).

    y = W x + b + s * B A drop(x)          A: (rank, in), B: (out, rank)

``A`` is kaiming-uniform and ``B`` zero-initialised (as PEFT), so the model equals the backbone at
initialisation. Unmerged, the update costs N·rank·(in + out) multiply-adds per layer. It is linear
in ``x``, so ``merge()`` folds it into the frozen weight, W <- W + s·B·A, after which the layer
costs nothing extra; ``unmerge()`` subtracts the same product again (exact up to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.petl.base import PetlConfig, PetlLayer, check_targets, wrap_linears


@dataclass
class LoraConfig(PetlConfig):
    """Args:
    rank: rank of the update ``B·A``.
    targets: linear layers of each block to adapt: ``qkv`` (default), ``proj``, ``fc1``, ``fc2``.
    scale: ``s``, PEFT's ``lora_alpha / r``.
    """

    rank: int = 8
    targets: tuple[str, ...] = ("qkv",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        self.targets = check_targets(self.targets)


class LoraLinear(PetlLayer):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: LoraConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.scale = config.scale
        self.lora_dropout = nn.Dropout(config.dropout)
        self.lora_A = nn.Linear(self.in_features, config.rank, bias=False)
        self.lora_B = nn.Linear(config.rank, self.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.scale * self.lora_B(self.lora_A(self.lora_dropout(x)))

    def get_delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B.weight @ self.lora_A.weight

    def extra_macs(self, tokens: int) -> int:
        rank = self.lora_A.out_features
        return 0 if self.merged else tokens * rank * (self.in_features + self.out_features)

    def merge_update(self) -> None:
        self.base_layer.weight += self.get_delta_weight()

    def unmerge_update(self) -> None:
        self.base_layer.weight -= self.get_delta_weight()


def inject_lora(blocks: nn.Sequential, config: LoraConfig) -> None:
    wrap_linears(blocks, config.targets, lambda layer: LoraLinear(layer, config))
