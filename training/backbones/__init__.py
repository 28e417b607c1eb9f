"""Backbones: the registry of built-in ones, the DINOv2 ONNX -> timm converter, fetch-and-cache,
and loading of timm ViTs with local or built-in weights."""

from dynadapter.training.backbones.cache import default_cache_dir, fetch_builtin_backbone
from dynadapter.training.backbones.registry import BUILTIN_BACKBONES, BUILTIN_PREFIX, BuiltinBackbone, get_builtin
from dynadapter.training.backbones.timm_loading import create_backbone, load_timm_weights

__all__ = [
    "BUILTIN_BACKBONES",
    "BUILTIN_PREFIX",
    "BuiltinBackbone",
    "create_backbone",
    "default_cache_dir",
    "fetch_builtin_backbone",
    "get_builtin",
    "load_timm_weights",
]
