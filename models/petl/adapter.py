"""AdaptFormer-style adapter: a bottleneck MLP in parallel with each block's MLP.

    x <- x + attn(...)                     (unchanged)
    x <- x + ls2(mlp(norm2(x))) + s * up(drop(act(down(x))))

``up`` is zero-initialised so the adapted model equals the backbone at initialisation. The
nonlinearity makes it unmergeable: it costs 2·N·D·dim extra multiply-adds per block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.petl.base import PetlConfig, PetlLayer


@dataclass
class AdapterConfig(PetlConfig):
    """Args:
    dim: bottleneck width (the paper's and AdaptFormer's default is 8).
    scale: ``s``, AdaptFormer uses 0.1 for ViT-B; 1.0 learns faster on small tasks.
    """

    dim: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1:
            raise ConfigError(f"adapter dim must be >= 1, got {self.dim}")


class Bottleneck(nn.Module):
    def __init__(self, width: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(width, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(dim, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x))))


class AdapterBlock(PetlLayer):
    """A timm ``Block`` with a parallel adapter beside its MLP (layer scale and drop-path kept)."""

    def __init__(self, base_layer: Block, config: AdapterConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.scale = config.scale
        self.adapter = Bottleneck(base_layer.norm1.normalized_shape[0], config.dim, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base_layer
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x)))) + self.scale * self.adapter(x)

    def extra_macs(self, tokens: int) -> int:
        return 2 * tokens * self.adapter.down.in_features * self.adapter.down.out_features


def inject_adapter(blocks: nn.Sequential, config: AdapterConfig) -> None:
    for i, block in enumerate(blocks):
        if not isinstance(block, Block):
            raise TypeError(f"adapter supports timm Block, block {i} is {type(block).__name__}")
        blocks[i] = AdapterBlock(block, config)
