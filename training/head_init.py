"""How the exit heads start: ``--head-init random``, ``standardised`` or ``probe``.

``random``: timm's initialisation, each head's norm the identity affine. A shallow ViT stage's pooled,
normalised tokens barely vary from image to image next to their constant offsets (DINOv2 ViT-S/14 on
mnist at 112 px, median per-feature standard deviation before training: 0.02 after block 3, 0.06 after
block 6, 0.15 after block 9; after the default training, block 6: 0.18, against single features' means
up to 11.5), so a randomly started classifier reads mostly constants, and the optimiser moves each weight
by about the learning rate per step: in a short run the middle exits stay far from what a logistic
regression reads off the very same features (after block 6: the trained two-layer MLP head 74.0% of test
images against 90.2% for a logistic regression on the trained model's own features, and 83.9% on the
frozen backbone's).

``standardised`` is data-dependent initialisation (Krähenbühl et al., "Data-dependent Initializations
of Convolutional Neural Networks", ICLR 2016; the linear-evaluation protocol standardises the features
for the same reason): each linear or MLP head's own norm gets the per-feature scale and shift that give
its pooled output zero mean and unit variance on the training images, with the model as it stands before
the first step. Only the norm's affine changes, so the head's architecture, FLOPs and export are the
same, and the model trains from there like any other. A transformer head's norm and the last exit's (the
backbone's pretrained final norm, frozen, not in the checkpoint) stay as they are (`reads_the_stage`).

``probe`` is LP-FT (training/linear_probe.py).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import ExitHead
from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.training.data import ImageDataset
from dynadapter.training.linear_probe import head_features

log = logging.getLogger(__name__)

#: Floor of a feature's standard deviation, so that a constant feature is not scaled without bound.
MIN_STD = 1e-3


def standardise_heads(model: DynamicViT, train: ImageDataset, workers: int) -> list[dict[str, float]]:
    """Set the norm affine (LayerNorm weight [D], bias [D]) of every head that `reads_the_stage` so that its
    pooled features have mean 0 and standard deviation 1 per feature on ``train`` (read without its
    augmentation draws; a standard deviation below ``MIN_STD`` counts as ``MIN_STD``). Returns per head the
    median feature standard deviation before (``std_before``) and whether it was ``standardised``. Raises
    ConfigError on an empty train split.

    Every ``HEAD_POOLS`` rule commutes with a per-feature affine of positive scale, which 1 / std is."""
    if not len(train):
        raise ConfigError("--head-init standardised measures the heads' features on the train split: it has no images")
    features, _ = head_features(model, dataclasses.replace(train, augment=None), workers)
    report = []
    for head, block, x in zip(model.heads, model.config.exits, features, strict=True):
        std = np.maximum(x.std(0), MIN_STD)
        standardised = reads_the_stage(head)
        if standardised:
            with torch.no_grad():
                scale = torch.from_numpy(1.0 / std).to(head.norm.weight)
                shift = torch.from_numpy(x.mean(0)).to(head.norm.weight)
                head.norm.bias.copy_((head.norm.bias - shift) * scale)
                head.norm.weight.mul_(scale)
        report.append({"std_before": float(np.median(std)), "standardised": standardised})
        log.info(
            "exit after block %d: median feature std %.3g, %s",
            block,
            np.median(std),
            "standardised"
            if standardised
            else "left as is (" + ("a transformer head" if len(head.blocks) else "the backbone's norm") + ")",
        )
    if not any(r["standardised"] for r in report):
        log.warning("--head-init standardised changed nothing: no exit has a linear or MLP head of its own (--heads)")
    return report


def reads_the_stage(head: ExitHead) -> bool:
    """Whether standardising applies: the head's classifier reads the stage's own pooled tokens through a
    norm of its own (a ``linear`` or ``mlp`` head; not the last exit's borrowed, frozen backbone norm, nor a
    ``transformer`` head, whose norm reads its own freshly started block: standardising that one slowed the
    exit down, mnist after block 3: 76.8% of test images against 87.0%)."""
    norm = head.norm
    own = isinstance(norm, nn.LayerNorm) and norm.bias is not None and norm.weight.requires_grad
    return own and not len(head.blocks)
