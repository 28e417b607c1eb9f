"""WiSE-FT: interpolate the trained weights toward the probe-initialised ones, the mix chosen on val.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022: the weights on the line between
the starting point and the fine-tuned model keep more of the starting point's robustness to
distribution shift, often at no cost in distribution. Here the starting point is LP-FT's (``--head-init
probe``, training/linear_probe.py): the frozen backbone with zero PETL updates and the probes as heads.
Only the trainable weights (PETL and heads) move; the backbone is shared by both ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dynadapter.errors import ConfigError
from dynadapter.models.dynamic_vit import DynamicViT

#: The mixing coefficients tried: 0 is the probe-initialised model, 1 the trained one.
WISE_FT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def interpolate(
    anchor: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """theta(alpha) = (1 - alpha) * anchor + alpha * finetuned, tensor by tensor (same names and shapes).
    Raises ConfigError when the two states hold different tensors."""
    if set(anchor) != set(finetuned):
        raise ConfigError(
            f"the WiSE-FT anchor and the trained weights differ: {sorted(set(anchor) ^ set(finetuned))[:5]}"
        )
    return {name: (1 - alpha) * anchor[name] + alpha * tensor for name, tensor in finetuned.items()}


def choose_alpha(
    model: DynamicViT,
    anchor: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    score: Callable[[DynamicViT], tuple[float, float]],
) -> dict[str, Any]:
    """Load theta(alpha) for every alpha of `WISE_FT_ALPHAS` into ``model``, score it (``score``: the
    validation objective, higher tuples better, here (mean exit accuracy, -mean cross-entropy)) and
    leave the model at the best; ties go to the larger alpha, closer to what was trained.

    Returns ``{"alpha": the chosen alpha, "alphas": [{"alpha", "val_acc", "val_loss"}, ...]}``."""
    # Loading a mix writes into the parameters, which a CPU model's state dict shares: keep copies.
    anchor, finetuned = clone(anchor), clone(finetuned)
    rows, scores = [], []
    for alpha in WISE_FT_ALPHAS:
        model.load_trainable_state_dict(interpolate(anchor, finetuned, alpha))
        accuracy, neg_loss = score(model)
        scores.append(((accuracy, neg_loss), alpha))
        rows.append({"alpha": alpha, "val_acc": accuracy, "val_loss": -neg_loss})
    _, best = max(scores)
    model.load_trainable_state_dict(interpolate(anchor, finetuned, best))
    return {"alpha": best, "alphas": rows}


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in state.items()}
