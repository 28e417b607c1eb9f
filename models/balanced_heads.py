"""Exit heads, balanced across depth.

The paper's Theorem 1: features of shallow stages are less linearly separable, so a shallow exit
needs a heavier head to reach a useful accuracy, while a deep exit needs only a linear layer. The
default therefore gives the shallow exits an MLP whose width shrinks with depth, and the last exit
the backbone's usual norm + linear head. A head's multiply-adds count in its exit's cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.models.vision_transformer import Block
from torch import nn

from dynadapter.errors import ConfigError

HEAD_KINDS = ("linear", "mlp", "transformer")


@dataclass
class HeadConfig:
    """Args:
    kind: ``linear`` (norm + linear), ``mlp`` (norm, linear, GELU, linear) or ``transformer``
        (``depth`` transformer blocks on all tokens, then norm + linear).
    width: hidden width of ``mlp`` as a multiple of the embedding width.
    depth: number of blocks of a ``transformer`` head.
    """

    kind: str = "linear"
    width: float = 1.0
    depth: int = 1

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ConfigError(f"head kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.width <= 0 or self.depth < 1:
            raise ConfigError("head width must be > 0 and depth >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def balanced_head_configs(num_exits: int) -> list[HeadConfig]:
    """Default per-exit heads, heaviest first: a one-block transformer head on the first exit (its
    tokens have mixed least, and a pooled linear read-out of them is weak), MLPs of width K-2, ..., 1
    times the embedding width on the other early exits, the usual norm + linear on the last."""
    if num_exits == 1:
        return [HeadConfig("linear")]
    middle = [HeadConfig("mlp", width=float(num_exits - 1 - k)) for k in range(1, num_exits - 1)]
    return [HeadConfig("transformer", depth=1), *middle, HeadConfig("linear")]


def linear_head_configs(num_exits: int) -> list[HeadConfig]:
    """Plain linear heads everywhere (the ablation of balanced heads)."""
    return [HeadConfig("linear") for _ in range(num_exits)]


def parse_head_spec(spec: str, num_exits: int) -> list[HeadConfig]:
    """``balanced``, ``linear``, or one ``kind[:n]`` per exit, e.g. ``transformer:1,mlp:2,mlp:1,linear``
    (n = width multiple of an ``mlp`` head, depth of a ``transformer`` head)."""
    if spec == "balanced":
        return balanced_head_configs(num_exits)
    if spec == "linear":
        return linear_head_configs(num_exits)
    heads = []
    for item in spec.split(","):
        kind, _, n = item.strip().partition(":")
        if kind not in HEAD_KINDS:
            raise ConfigError(f"head kind must be one of {HEAD_KINDS}, got {kind!r} in {spec!r}")
        heads.append(HeadConfig(kind, width=float(n or 1)) if kind == "mlp" else HeadConfig(kind, depth=int(n or 1)))
    if len(heads) != num_exits:
        raise ConfigError(f"{len(heads)} heads given for {num_exits} exits: {spec!r}")
    return heads


class ExitHead(nn.Module):
    """Pools the tokens of a stage (class token, or mean of patch tokens) and classifies them."""

    def __init__(
        self,
        config: HeadConfig,
        width: int,
        num_classes: int,
        num_heads: int,
        pool: str = "token",
        num_prefix_tokens: int = 1,
        dropout: float = 0.0,
        norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.pool, self.num_prefix_tokens = pool, num_prefix_tokens
        self.blocks = nn.Sequential(
            *[Block(width, num_heads) for _ in range(config.depth if config.kind == "transformer" else 0)]
        )
        # The last exit reuses the backbone's pretrained final norm (passed in, frozen).
        self.norm = norm if norm is not None else nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        if config.kind == "mlp":
            hidden = max(1, round(width * config.width))
            self.fc = nn.Sequential(
                nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
            )
        else:
            self.fc = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(tokens))
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.fc(self.drop(x))

    def set_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
