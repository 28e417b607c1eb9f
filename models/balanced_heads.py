"""Exit heads, balanced across depth.

The paper's Theorem 1: features of shallow stages are less linearly separable, so a shallow exit
needs a heavier head to reach a useful accuracy, while a deep exit needs only a linear layer. The
default therefore gives the shallow exits an MLP whose width shrinks with depth, and the last exit
the backbone's usual norm + linear head. A head's multiply-adds count in its exit's cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.layers import global_pool_nlc
from timm.models.vision_transformer import Block
from torch import nn

from dynadapter.errors import ConfigError

HEAD_KINDS = ("linear", "mlp", "transformer")
#: the backbone ``global_pool`` values an exit head can read tokens with (timm's ``global_pool_nlc``);
#: ``map`` (attention pooling) is a trained module of the backbone's own head, not a pooling rule.
HEAD_POOLS = ("token", "avg", "max", "avgmax")


@dataclass
class HeadConfig:
    """Args:
    kind: ``linear`` (norm + linear), ``mlp`` (norm, linear, GELU, linear) or ``transformer``
        (``depth`` transformer blocks on all tokens, then norm + linear).
    width: hidden width of ``mlp`` as a multiple of the embedding width.
    depth: number of blocks of a ``transformer`` head.
    linear_path: the head also has a linear classifier on the stage's pooled features (before a
        transformer head's blocks and the head's dropout), its logits added to the classifier's. LP-FT's
        probe sits there
        (training/linear_probe.py): dropout on the probe's input (forward sparsity's, up to 0.2 in the
        first stage) moved a probe's logits by hundreds where it dropped a near-constant feature (digits:
        the first exit fell from the probe's 94% to 25% of validation images in the first epoch).
    """

    kind: str = "linear"
    width: float = 1.0
    depth: int = 1
    linear_path: bool = False

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
    """Pools the tokens of a stage as the backbone does and classifies them: [B, N, D] -> logits [B, C].

    ``fc`` is the classifier (a Linear, or an MLP for ``mlp``); a head with ``linear_path`` also has
    ``linear``, a Linear on the stage's pooled features (`features`: before a transformer head's blocks and
    the dropout), whose logits are added to ``fc``'s.

    Args:
        config: the head's kind, width and depth.
        width: ``D``, the embedding width.
        num_classes: ``C``.
        num_heads: attention heads of a ``transformer`` head's blocks.
        pool: the backbone's ``global_pool``, one of ``HEAD_POOLS``: ``token`` reads the class token,
            the others reduce the patch tokens, with timm's own ``global_pool_nlc``.
        num_prefix_tokens: class and register tokens in front of the patch tokens.
        dropout: dropout before the classifier (and inside an ``mlp``).
        norm: the norm before pooling; None makes a new LayerNorm.

    Raises ConfigError for a ``pool`` outside ``HEAD_POOLS``.
    """

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
        if pool not in HEAD_POOLS:
            raise ConfigError(f"exit heads pool like the backbone's global_pool, one of {HEAD_POOLS}; got {pool!r}")
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
        self.linear = nn.Linear(width, num_classes) if config.linear_path else None

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """What a linear read-out of the stage reads (the linear path; a linear or mlp head's classifier
        too): its tokens normed and pooled as the backbone pools them, [B, N, D] -> [B, D]."""
        return global_pool_nlc(self.norm(tokens), self.pool, self.num_prefix_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.features(self.blocks(tokens))  # no blocks: an empty Sequential passes the tokens on
        logits = self.fc(self.drop(x))
        if self.linear is None:
            return logits
        # the linear path reads the stage's own tokens: before a transformer head's blocks, and undropped
        return logits + self.linear(self.features(tokens) if len(self.blocks) else x)

    def set_dropout(self, p: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p
