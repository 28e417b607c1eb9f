"""A frozen timm ViT cut into stages, a PETL method inside it, and one exit head per stage.

Exit placement (which blocks end a stage) lives here; exit policy (thresholds) lives with the
consumer: calibration in training/, the segment runner in service/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import ExitHead, HeadConfig, balanced_head_configs
from dynadapter.models.petl import PetlLayer, inject_petl, make_petl_config


@dataclass
class ForwardSparsity:
    """Forward sparsity: dropout in the exit branches, stronger in shallow stages than deep ones.

    Stage k of K gets ``shallow + (deep - shallow) * k / (K - 1)`` in its PETL layers and its head.
    The paper motivates it by the shallow stages' tendency to over-fit their own exit, which pulls
    the shared adapters away from the representation the deep exits need. ``0, 0`` switches it off.
    """

    shallow: float = 0.2
    deep: float = 0.0

    def rate(self, stage: int, num_stages: int) -> float:
        if num_stages == 1:
            return self.deep
        return max(0.0, self.shallow + (self.deep - self.shallow) * stage / (num_stages - 1))


@dataclass
class DynamicViTConfig:
    """Everything needed to rebuild the trainable model around a backbone (stored in config.json).

    Args:
        exits: 1-based block indices after which an exit sits; the last must be the depth.
        petl: ``adapter``, ``lora``, ``repadapter`` or ``none`` (heads only).
        petl_options: keyword arguments of the method's config dataclass.
        heads: one head config per exit; empty means the balanced default.
        head_dropout: dropout of every head, the least that forward sparsity leaves it (like the PETL
            config's ``dropout`` for the PETL branches).
    """

    num_classes: int
    exits: list[int]
    petl: str = "adapter"
    petl_options: dict[str, Any] = field(default_factory=dict)
    heads: list[HeadConfig] = field(default_factory=list)
    forward_sparsity: ForwardSparsity = field(default_factory=ForwardSparsity)
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        self.heads = [h if isinstance(h, HeadConfig) else HeadConfig(**h) for h in self.heads]
        if isinstance(self.forward_sparsity, dict):
            self.forward_sparsity = ForwardSparsity(**self.forward_sparsity)
        if not self.heads:
            self.heads = balanced_head_configs(len(self.exits))
        if len(self.heads) != len(self.exits):
            raise ConfigError(f"{len(self.heads)} head configs for {len(self.exits)} exits")
        if list(self.exits) != sorted(set(self.exits)) or self.exits[0] < 1:
            raise ConfigError(f"exits must be strictly increasing block indices >= 1, got {self.exits}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DynamicViT(nn.Module):
    """A frozen timm ViT cut into stages after ``config.exits``, with a PETL method injected into its
    blocks and one exit head per stage.

    Stage k runs blocks ``bounds[k]:bounds[k + 1]`` (stage 0 also timm's prelude: patch embedding,
    class/register tokens, position embedding), then exit head k reads its output. Shapes: images
    [B, 3, H, W] -> hidden states [B, N, D] between stages (N = prefix + patch tokens, D = the
    embedding width) -> logits [B, C] per exit. Only the PETL and head parameters train; the last
    exit's ``linear`` head reuses the backbone's final norm. Raises ConfigError when the last exit
    does not follow the last block.
    """

    def __init__(self, backbone: VisionTransformer, config: DynamicViTConfig) -> None:
        super().__init__()
        depth = len(backbone.blocks)
        if config.exits[-1] != depth:
            raise ConfigError(f"the last exit must follow the last block ({depth}), got {config.exits}")
        self.config = config
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        width, num_heads = backbone.embed_dim, backbone.blocks[0].attn.num_heads
        self.petl_dropout = 0.0
        if config.petl != "none":
            petl_config = make_petl_config(config.petl, **config.petl_options)
            inject_petl(backbone.blocks, config.petl, petl_config)
            self.petl_dropout = petl_config.dropout
        self.bounds = [0, *config.exits]
        last = len(config.exits) - 1
        self.heads = nn.ModuleList(
            ExitHead(
                hc,
                width,
                config.num_classes,
                num_heads,
                backbone.global_pool,
                backbone.num_prefix_tokens,
                norm=backbone.norm if k == last and hc.kind == "linear" else None,
            )
            for k, hc in enumerate(config.heads)
        )
        self.set_forward_sparsity(config.forward_sparsity)

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def stage_blocks(self, k: int) -> nn.Sequential:
        return self.backbone.blocks[self.bounds[k] : self.bounds[k + 1]]

    def set_forward_sparsity(self, sparsity: ForwardSparsity) -> None:
        """Dropout of stage k's head and PETL branches: the stage's forward-sparsity rate, at least the
        configured ``head_dropout`` / PETL ``dropout``."""
        for k in range(self.num_exits):
            p = sparsity.rate(k, self.num_exits)
            self.heads[k].set_dropout(max(p, self.config.head_dropout))
            for m in self.stage_blocks(k).modules():
                if isinstance(m, PetlLayer):
                    m.set_dropout(max(p, self.petl_dropout))

    def train(self, mode: bool = True) -> DynamicViT:
        super().train(mode)
        # The frozen backbone's own dropout / drop-path stays off: only the PETL and head branches
        # are regularised (PETL wrappers re-enable their own branch below).
        self.backbone.eval()
        for m in self.backbone.modules():
            if isinstance(m, PetlLayer):
                m.train(mode)
                m.base_layer.eval()
        return self

    def first_stage(self, images: torch.Tensor) -> torch.Tensor:
        """Stage 0's hidden state [B, N, D] from images [B, 3, H, W], through timm's public
        ``forward_intermediates``, so that its prelude (patch and position embedding, class and
        register tokens, pre-norm) is the backbone's own in every timm release."""
        (hidden,) = self.backbone.forward_intermediates(
            images,
            indices=[self.bounds[1] - 1],
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        if self.backbone.num_prefix_tokens == 0:
            return hidden
        patches, prefix = hidden  # timm splits off the prefix tokens; the next stage needs them in front
        return torch.cat([prefix, patches], dim=1)

    def forward_stage(self, k: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage k: images [B, 3, H, W] (k = 0) or the previous stage's hidden state [B, N, D]
        -> (hidden [B, N, D], exit-k logits [B, C]). Each stage runs alone: export cuts here."""
        x = self.first_stage(x) if k == 0 else self.stage_blocks(k)(x)
        return x, self.heads[k](x)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Logits [B, C] of every exit, shallow to deep, for images [B, 3, H, W]."""
        logits, x = [], images
        for k in range(self.num_exits):
            x, out = self.forward_stage(k, x)
            logits.append(out)
        return logits

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changed: PETL and head parameters (the checkpoint's content)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().contiguous() for n, t in self.state_dict().items() if n in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ConfigError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        self.load_state_dict(state, strict=False)
