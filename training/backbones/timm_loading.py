"""timm loading: a headless timm ViT at a resolution, with builtin, local or timm pretrained weights.

Local weights are safetensors files with timm key names; the position embedding is resampled to
the model's grid with timm's own `resample_abs_pos_embed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from dynadapter.errors import ConfigError
from dynadapter.training.backbones.cache import fetch_builtin_backbone
from dynadapter.training.backbones.registry import BUILTIN_PREFIX, get_builtin

log = logging.getLogger(__name__)


def _fit_pos_embed(model: VisionTransformer, pos_embed: torch.Tensor, antialias: bool) -> torch.Tensor:
    if model.pos_embed is None or pos_embed.shape == model.pos_embed.shape:
        return pos_embed
    log.info("resampling pos_embed %s -> %s", tuple(pos_embed.shape), tuple(model.pos_embed.shape))
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(model.patch_embed.grid_size),
        num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens,
        interpolation="bicubic",
        antialias=antialias,
    )


def _check_fits(model: VisionTransformer, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("head.")}
    problems = {
        "missing": sorted(expected.keys() - state.keys()),
        "unexpected": sorted(state.keys() - expected.keys()),
        "wrong shape": sorted(
            f"{k} {tuple(state[k].shape)} != {tuple(s)}"
            for k, s in expected.items()
            if k in state and state[k].shape != s
        ),
    }
    found = [
        f"{kind} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for kind, keys in problems.items()
        if keys
    ]
    if found:
        raise ConfigError(f"{path} does not fit this {type(model).__name__}: " + "; ".join(found))


def load_timm_weights(model: VisionTransformer, path: Path, *, antialias: bool = True) -> None:
    """Load a safetensors file with timm key names into `model`, strictly.

    `pos_embed` is resampled with timm's `resample_abs_pos_embed` (bicubic; `antialias` as timm's
    own checkpoint filter does by default) when its grid differs from the model's. `head.*` keys
    are ignored on both sides: backbones are built headless and heads are trained here. Anything
    else missing, unexpected or of the wrong shape raises ConfigError naming the keys.
    """
    state = {k: v for k, v in load_file(path).items() if not k.startswith("head.")}
    if "pos_embed" in state:
        state["pos_embed"] = _fit_pos_embed(model, state["pos_embed"], antialias)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=False)  # strict above, except for the head


def create_backbone(
    name_or_builtin: str, img_size: int, weights: Path | None = None, pretrained: bool = False
) -> VisionTransformer:
    """A headless timm VisionTransformer at `img_size`.

    Args:
        name_or_builtin: `builtin:<name>` (fetched, converted and cached once) or a timm model name.
        img_size: input resolution; the position embedding is resampled to it.
        weights: local safetensors with timm key names for a timm model name.
        pretrained: timm's own pretrained weights (needs a model hub).
    """
    if name_or_builtin.startswith(BUILTIN_PREFIX):
        if weights is not None or pretrained:
            raise ConfigError(f"{name_or_builtin} brings its own weights; pass a timm name to use others")
        entry = get_builtin(name_or_builtin)
        model = entry.build(img_size)
        load_timm_weights(model, fetch_builtin_backbone(entry.name), antialias=entry.pos_embed_antialias)
        return model
    if weights is not None and pretrained:
        raise ConfigError("choose either weights=FILE or pretrained=True, not both")
    model = timm.create_model(name_or_builtin, pretrained=pretrained, num_classes=0, exportable=True, img_size=img_size)
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"{name_or_builtin} is a {type(model).__name__}, not a timm VisionTransformer")
    if weights is not None:
        load_timm_weights(model, Path(weights))
    return model
