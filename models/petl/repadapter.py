"""RepAdapter (Luo et al. 2023): a linear adapter in front of frozen linear layers, merged away at export.

    y = W (x + s * (U (A drop(x) + a) + u)) + b        A: (dim, D), U: group-wise (D, dim)

placed before the attention's qkv and the MLP's fc1 by default. ``U`` is a group-wise 1x1 conv
(``groups`` diagonal blocks, dim·D/groups weights) and is zero-initialised, so the model equals the
backbone at initialisation. Unmerged, an adapter costs N·(D·dim + dim·D/groups) multiply-adds.

The branch has no nonlinearity, so with U_full the block-diagonal matrix of ``U``:

    W' = W (I + s U_full A),    b' = b + s W (U_full a + u)

``merge()`` writes W', b' into the frozen layer and the branch stops running: the merged model costs
exactly what the backbone does. Because the fold multiplies W, undoing it by subtraction would need
the original W anyway, so ``merge()`` keeps the original weight and bias in non-persistent buffers
(not in checkpoints) and ``unmerge()`` restores them bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.petl.base import PetlConfig, PetlLayer, check_targets, wrap_linears


@dataclass
class RepAdapterConfig(PetlConfig):
    """Args:
    dim: bottleneck width (8 by default, as in the paper).
    groups: number of diagonal blocks of the up projection; must divide ``dim`` and the width.
    targets: linear layers to put an adapter in front of: ``qkv`` and ``fc1`` (default), ``proj``,
        ``fc2``.
    scale: ``s``.
    """

    dim: int = 8
    groups: int = 2
    targets: tuple[str, ...] = ("qkv", "fc1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1 or self.groups < 1 or self.dim % self.groups:
            raise ConfigError(f"RepAdapter needs groups >= 1 dividing dim >= 1, got {self.groups}, {self.dim}")
        self.targets = check_targets(self.targets)


class RepAdapterLinear(PetlLayer):
    """A frozen ``nn.Linear`` with a trainable linear adapter on its input."""

    mergeable = True

    def __init__(self, base_layer: nn.Linear, config: RepAdapterConfig) -> None:
        super().__init__()
        width = base_layer.in_features
        if width % config.groups:
            raise ConfigError(f"RepAdapter groups={config.groups} must divide the layer width {width}")
        self.base_layer = base_layer
        self.in_features, self.out_features = width, base_layer.out_features
        self.scale = config.scale
        self.drop = nn.Dropout(config.dropout)
        self.down = nn.Linear(width, config.dim)
        self.up = nn.Conv1d(config.dim, width, kernel_size=1, groups=config.groups)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        # the frozen layer's own weight and bias, held only while merged
        self.register_buffer("original_weight", None, persistent=False)
        self.register_buffer("original_bias", None, persistent=False)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(self.drop(x)).transpose(-1, -2)  # channels first for the 1x1 conv
        return self.up(h).transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        return self.base_layer(x + self.scale * self.adapter(x))

    def up_matrix(self) -> torch.Tensor:
        """``U_full``: the up projection as the (D, dim) block-diagonal matrix it applies."""
        return torch.block_diag(*self.up.weight.squeeze(-1).chunk(self.up.groups))

    def extra_macs(self, tokens: int) -> int:
        # one multiply-add per adapter weight per token
        return 0 if self.merged else tokens * (self.down.weight.numel() + self.up.weight.numel())

    def merge_update(self) -> None:
        base, up = self.base_layer, self.up_matrix()
        shift = self.scale * (up @ self.down.bias + self.up.bias)
        self.original_weight = base.weight.clone()
        self.original_bias = None if base.bias is None else base.bias.clone()
        if base.bias is None:
            base.bias = nn.Parameter(torch.zeros_like(base.weight[:, 0]), requires_grad=False)
        base.bias += base.weight @ shift  # before W changes: b' uses the original W
        base.weight += base.weight @ (self.scale * up @ self.down.weight)

    def unmerge_update(self) -> None:
        base = self.base_layer
        base.weight.copy_(self.original_weight)
        if self.original_bias is None:
            base.bias = None
        else:
            base.bias.copy_(self.original_bias)
        self.original_weight = self.original_bias = None


def inject_repadapter(blocks: nn.Sequential, config: RepAdapterConfig) -> None:
    wrap_linears(blocks, config.targets, lambda layer: RepAdapterLinear(layer, config))
