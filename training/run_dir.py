"""The run directory (SPEC §4): config.json, checkpoint.safetensors, metrics.jsonl, calibration.json.

``config.json`` holds everything needed to rebuild the model around its frozen backbone; the
checkpoint holds only what training changed (PETL and head parameters). No pickle: JSON and
safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from models.dynamic_vit import DynamicViT, DynamicViTConfig
from training.builtin_backbones import create_backbone, load_timm_weights
from training.data import Preprocessing

CONFIG, CHECKPOINT, METRICS, CALIBRATION = "config.json", "checkpoint.safetensors", "metrics.jsonl", "calibration.json"
RUN_FORMAT = 1


@dataclass
class BackboneSpec:
    """Args:
    name: ``builtin:<name>`` or a timm model name.
    weights: local safetensors with timm key names, or None.
    pretrained: timm's own pretrained weights (needs a model hub).
    kwargs: extra ``timm.create_model`` arguments (tests build tiny ViTs this way).
    init_seed: seed of the random initialisation when no weights are loaded, so the same frozen
        random backbone is rebuilt at export.
    """

    name: str
    img_size: int
    weights: str | None = None
    pretrained: bool = False
    kwargs: dict[str, Any] | None = None
    init_seed: int = 0

    def build(self) -> VisionTransformer:
        torch.manual_seed(self.init_seed)
        weights = Path(self.weights) if self.weights else None
        if not self.kwargs:
            return create_backbone(self.name, self.img_size, weights, self.pretrained)
        model = timm.create_model(self.name, pretrained=self.pretrained, num_classes=0, exportable=True,
                                  img_size=self.img_size, **self.kwargs)
        if weights is not None:
            load_timm_weights(model, weights)
        return model


@dataclass
class Run:
    model: DynamicViT
    config: dict[str, Any]
    labels: list[str]
    preprocessing: Preprocessing


def build_model(backbone: BackboneSpec, model_config: DynamicViTConfig) -> DynamicViT:
    return DynamicViT(backbone.build(), model_config)


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps({"format": RUN_FORMAT, **config}, indent=2))


def save_checkpoint(run_dir: Path, model: DynamicViT) -> None:
    save_file(model.trainable_state_dict(), str(run_dir / CHECKPOINT))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def load_run(run_dir: Path) -> Run:
    """Rebuild the trained model (eval mode) from a run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file() or not (run_dir / CHECKPOINT).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (needs {CONFIG} and {CHECKPOINT})")
    config = json.loads((run_dir / CONFIG).read_text())
    if config.get("format") != RUN_FORMAT:
        raise ValueError(f"{run_dir / CONFIG}: unsupported run format {config.get('format')!r}")
    model = build_model(BackboneSpec(**config["backbone"]), DynamicViTConfig(**config["model"]))
    model.load_trainable_state_dict(load_file(str(run_dir / CHECKPOINT)))
    pre = config["preprocessing"]
    return Run(model.eval(), config, config["labels"],
               Preprocessing(pre["size"][0], tuple(pre["mean"]), tuple(pre["std"]), pre["interpolation"]))
