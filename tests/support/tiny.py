"""Tiny random timm ViTs and ``DynamicViT``s for fast tests (no weights, no network), the flags and options for
a tiny training run (`TINY_BACKBONE`, `TINY_ARGS`) and a real tiny run directory (`train_tiny_run`)."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig


def tiny_vit(img_size: int = 32, depth: int = 4, width: int = 32, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        exportable=True,
        img_size=img_size,
        patch_size=8,
        depth=depth,
        embed_dim=width,
        num_heads=2,
    )


def tiny_model(
    petl: str = "adapter", exits: tuple[int, ...] = (1, 2, 3, 4), num_classes: int = 5, seed: int = 0, **config: object
) -> DynamicViT:
    model = DynamicViT(
        tiny_vit(depth=exits[-1], seed=seed),
        DynamicViTConfig(num_classes=num_classes, exits=list(exits), petl=petl, **config),
    )
    return model


def randomize_trainable(model: DynamicViT, seed: int = 1, std: float = 0.2) -> None:
    """Give zero-initialised PETL weights real values, so identity-at-init can't hide a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)


TINY_BACKBONE = {"depth": 4, "embed_dim": 32, "num_heads": 2, "patch_size": 4, "global_pool": "avg"}
#: `dynadapter train` flags for a tiny random ViT with two exits, one epoch (seconds on a CPU).
TINY_ARGS = [
    "--backbone",
    "vit_tiny_patch16_224",
    *[a for k, v in TINY_BACKBONE.items() for a in ("--backbone-arg", f"{k}={v}")],
    "--img-size",
    "16",
    "--exits",
    "2,4",
    "--epochs",
    "1",
]


def train_tiny_run(out: Path, petl: str = "adapter", epochs: int = 1, **overrides: object) -> Path:
    """A real run directory from `dynadapter train`'s code path, on builtin:digits, in seconds."""
    from dynadapter.training.trainer import TrainOptions, train

    overrides.setdefault("workers", 0)  # builtin images are decoded already: worker processes only cost startup
    overrides.setdefault("lr", 1e-2)

    opts = TrainOptions(
        data="builtin:digits",
        out=out,
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=TINY_BACKBONE,
        petl=petl,
        exits=[1, 2, 3, 4],
        img_size=16,
        epochs=epochs,
        progress=False,
        **overrides,
    )
    return train(opts)
