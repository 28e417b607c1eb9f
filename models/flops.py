"""Analytic FLOPs per exit, in the paper's convention: one multiply-add = one FLOP (as fvcore).

Counted: patch embedding, qkv/proj/MLP matmuls, the two attention matmuls, PETL branches as they
run at inference (0 for a merged RepAdapter or LoRA), and exit heads. Not counted (as in fvcore):
norms, softmax, activations, additions. ``tests/models/test_flops.py`` checks this against
``torch.utils.flop_counter`` (which counts 2 per multiply-add).
"""

from __future__ import annotations

import copy

from timm.models.vision_transformer import Block
from torch import nn

from dynadapter.models.balanced_heads import ExitHead
from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.models.petl import PetlLayer, merge_all


def linear_macs(layer: nn.Linear, rows: int) -> int:
    return rows * layer.in_features * layer.out_features


def block_macs(block: Block, tokens: int) -> int:
    attn, mlp = block.attn, block.mlp
    dim = attn.qkv.in_features
    return (
        linear_macs(attn.qkv, tokens)
        + 2 * tokens * tokens * dim  # q @ k^T and attn @ v over all heads
        + linear_macs(attn.proj, tokens)
        + linear_macs(mlp.fc1, tokens)
        + linear_macs(mlp.fc2, tokens)
    )


def petl_macs(module: nn.Module, tokens: int) -> int:
    return sum(m.extra_macs(tokens) for m in module.modules() if isinstance(m, PetlLayer))


def frozen_block(module: nn.Module) -> Block:
    """The timm Block inside a (possibly PETL-wrapped) block."""
    return next(m for m in module.modules() if isinstance(m, Block))


def head_macs(head: ExitHead, tokens: int) -> int:
    """An exit head's blocks on every token, then its classifier (and linear path) on one pooled row."""
    blocks = sum(block_macs(b, tokens) for b in head.blocks)
    classifiers = [head.fc] if head.linear is None else [head.fc, head.linear]
    return blocks + sum(linear_macs(m, 1) for c in classifiers for m in c.modules() if isinstance(m, nn.Linear))


def patch_embed_macs(model: DynamicViT) -> int:
    proj = model.backbone.patch_embed.proj
    grid = model.backbone.patch_embed.grid_size
    kernel = proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1]
    return grid[0] * grid[1] * kernel * proj.out_channels


def num_tokens(model: DynamicViT) -> int:
    grid = model.backbone.patch_embed.grid_size
    return grid[0] * grid[1] + model.backbone.num_prefix_tokens


def segment_macs(model: DynamicViT) -> list[int]:
    """Multiply-adds of each segment (stage k's blocks + exit head k; segment 0 adds the embedding)."""
    tokens = num_tokens(model)
    out = []
    for k in range(model.num_exits):
        blocks = model.stage_blocks(k)
        macs = sum(block_macs(frozen_block(b), tokens) + petl_macs(b, tokens) for b in blocks)
        macs += head_macs(model.heads[k], tokens)
        out.append(macs + (patch_embed_macs(model) if k == 0 else 0))
    return out


def cumulative_macs(model: DynamicViT) -> list[int]:
    """Multiply-adds an image uses when it leaves at exit k (all earlier segments included)."""
    out, total = [], 0
    for macs in segment_macs(model):
        total += macs
        out.append(total)
    return out


def exit_head_gflops(model: DynamicViT) -> list[float]:
    """GFLOPs of each exit head alone (heads hold no mergeable PETL layer)."""
    tokens = num_tokens(model)
    return [head_macs(head, tokens) / 1e9 for head in model.heads]


def early_heads_gflops(model: DynamicViT) -> float:
    """GFLOPs of every exit head but the last: what a request that cannot leave early skips."""
    return sum(exit_head_gflops(model)[:-1])


def deployed_cumulative_gflops(model: DynamicViT) -> list[float]:
    """Cumulative GFLOPs per exit of the model as exported: mergeable PETL layers folded in."""
    merged = copy.deepcopy(model)
    merge_all(merged)
    return [m / 1e9 for m in cumulative_macs(merged)]
