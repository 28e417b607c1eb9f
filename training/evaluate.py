"""Evaluation: per-exit accuracy and the accuracy/FLOPs trade-off of dynamic inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models.dynamic_vit import DynamicViT
from models.flops import deployed_cumulative_gflops
from training.calibration import sweep
from training.data import load_raw, to_tensors
from training.run_dir import CALIBRATION, load_run

REPORT_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@torch.no_grad()
def exit_logits(model: DynamicViT, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Logits of every exit, [K, N, C], in eval mode (the model's mode is restored after)."""
    was_training = model.training
    model.eval()
    chunks = [torch.stack(model(x)) for x in images.split(batch_size)]
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def exit_accuracies(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return (logits.argmax(-1) == targets[None]).float().mean(1).tolist()


def evaluate_run(run_dir: Path, data: str | None = None, split: str = "test") -> dict[str, Any]:
    """Per-exit accuracy and the threshold sweep on ``split``; writes eval.json (and a plot)."""
    run = load_run(run_dir)
    raw = load_raw(data or run.config["data"], run.config["train"]["seed"])
    if len(raw.splits[split].targets) == 0:
        raise ValueError(f"the {split} split of {data or run.config['data']} is empty")
    tensors = to_tensors(raw.splits[split], run.preprocessing)
    logits = exit_logits(run.model, tensors.images)
    cum = deployed_cumulative_gflops(run.model)
    table = sweep(logits.numpy(), tensors.targets.numpy(), cum)
    report = {"split": split, "num_samples": len(tensors.targets), "exits": run.model.config.exits,
              "cumulative_gflops": cum, "exit_accuracy": exit_accuracies(logits, tensors.targets),
              "sweep": table, "modes": _modes_on_split(Path(run_dir), table)}
    (Path(run_dir) / f"eval_{split}.json").write_text(json.dumps(report, indent=2))
    return report


def _modes_on_split(run_dir: Path, table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The validation-calibrated modes, measured on this split (the nearest swept threshold)."""
    path = run_dir / CALIBRATION
    if not path.is_file():
        return {}
    modes = json.loads(path.read_text())["modes"]
    return {name: min(table, key=lambda r: abs(r["threshold"] - m["threshold"])) for name, m in modes.items()}
