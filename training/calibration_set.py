"""The calibration set: the images a run's thresholds are chosen on, and the calibration made of them.

The validation split and, with ``--calibration-corrupted N`` (``TrainOptions.calibration_corrupted``), N
corrupted copies of every validation image after it (training/corruptions.py, `CorruptedDataset`: each copy
one kind of corruption at severity 1 or 2, ``CALIBRATION_SEVERITIES``, every kind and every severity an
equal share). Thresholds chosen on clean images alone let shifted images out at the early exits, whose
confidence means less on them: on the accuracy suite's shifted test split the exits after blocks 3 and 6
lost 19-21 points from clean to shifted, the last ones about 10 (issue 34). With the copies, a mode's
threshold is the one that holds on both.

Training (`trainer.finish`) and ``dynadapter calibrate`` (`evaluate.recalibrate_run`) both calibrate
through `calibrate_set`, so that they choose the same thresholds. calibration.json then also records each
mode's accuracy on the clean validation images alone and on the copies alone (docs/model-repository.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training.calibration import calibrate, sweep
from dynadapter.training.corruptions import CALIBRATION_SEVERITIES, CorruptedDataset, image_seed
from dynadapter.training.data import ImageDataset, stream
from dynadapter.training.evaluate import loader_logits
from dynadapter.training.exit_health import health_record, losing_exits
from dynadapter.training.options import TrainOptions

#: The copies' stream of draws under the run's seed: an image index that no split reaches (`copies_seed`).
COPIES_STREAM = 2**32


def copies_seed(seed: int) -> int:
    """The seed of the corrupted copies' draws: the run's ``seed`` on a stream of its own, so that no copy
    shares the random draws (noise, directions) of the same index in the suite's shifted test split."""
    return image_seed(seed, COPIES_STREAM)


def calibration_dataset(val: ImageDataset, opts: TrainOptions) -> torch.utils.data.Dataset:
    """The calibration set as a dataset of (float32 [3, H, W], class id): ``val`` itself without copies,
    else ``val`` then its ``opts.calibration_corrupted`` corrupted copies (N (1 + copies) items)."""
    if not opts.calibration_corrupted:
        return val
    copies = CorruptedDataset(val, copies_seed(opts.seed), opts.calibration_corrupted, CALIBRATION_SEVERITIES)
    return torch.utils.data.ConcatDataset([val, copies])


def calibration_logits(
    model: DynamicViT, val_dataset: ImageDataset, opts: TrainOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits [K, N', C] (float32, CPU) and the targets [N'] on the calibration set: the N
    clean validation images, then ``opts.calibration_corrupted`` corrupted copies of them, copy by copy
    (N' = N (1 + copies)); streamed with ``opts.workers`` DataLoader workers."""
    return loader_logits(model, stream(calibration_dataset(val_dataset, opts), opts.workers))


def calibrate_set(model: DynamicViT, val_dataset: ImageDataset, opts: TrainOptions) -> dict[str, Any]:
    """calibration.json's content (`calibration.calibrate`: the table, budgets and modes) chosen on the
    calibration set, bootstrap resamples and seed from ``opts``, and ``exit_health`` (training/exit_health.py:
    the exits that lose to an earlier one on the clean validation images). With corrupted copies, each mode also has
    ``val_accuracy`` / ``corrupted_accuracy`` (fractions: its accuracy at its threshold on the clean images /
    the copies alone; ``accuracy`` stays the whole set's) and ``calibration`` says ``val_samples`` (N),
    ``corrupted_copies`` and ``corrupted_severities``."""
    logits, targets = (t.numpy() for t in calibration_logits(model, val_dataset, opts))
    clean = len(val_dataset)
    result = calibrate_logits(logits, targets, model, opts, clean)
    health = losing_exits(logits[:, :clean], targets[:clean], model.config.exits)
    return {**result, "exit_health": health_record(health, "val", clean)}


def calibrate_logits(
    logits: np.ndarray, targets: np.ndarray, model: DynamicViT, opts: TrainOptions, clean: int
) -> dict[str, Any]:
    """The table, budgets and modes (`calibration.calibrate`, bootstrap resamples and seed from ``opts``) from
    any runtime's logits [K, N', C] on the calibration set (targets [N']) whose first ``clean`` images are the
    validation split, with the corrupted copies' parts (`with_parts`) where ``opts`` has copies. The FLOPs are
    ``model``'s. export/precisions.py calibrates each OpenVINO precision through it, on the same images."""
    cum, heads = deployed_cumulative_gflops(model), early_heads_gflops(model)
    result = calibrate(logits, targets, cum, heads, resamples=opts.calibration_resamples, seed=opts.seed)
    if not opts.calibration_corrupted:
        return result
    return with_parts(result, logits, targets, clean, opts.calibration_corrupted, cum, heads)


def with_parts(
    result: dict[str, Any],
    logits: np.ndarray,
    targets: np.ndarray,
    clean: int,
    copies: int,
    cumulative_gflops: list[float],
    early_heads: float,
) -> dict[str, Any]:
    """``result`` (from `calibrate` on logits [K, N', C] and targets [N'] whose first ``clean`` images are
    the clean ones) with each mode's accuracy on either part and the record of the copies."""
    thresholds = [m["threshold"] for m in result["modes"].values()]

    def accuracies(part: slice) -> list[float]:
        return [
            r["accuracy"] for r in sweep(logits[:, part], targets[part], cumulative_gflops, thresholds, early_heads)
        ]

    parts = zip(accuracies(slice(None, clean)), accuracies(slice(clean, None)), strict=True)
    modes = {
        name: {**mode, "val_accuracy": val, "corrupted_accuracy": corrupted}
        for (name, mode), (val, corrupted) in zip(result["modes"].items(), parts, strict=True)
    }
    record = {"val_samples": clean, "corrupted_copies": copies, "corrupted_severities": list(CALIBRATION_SEVERITIES)}
    return {**result, "calibration": {**result["calibration"], **record}, "modes": modes}


def mode_text(name: str, mode: dict[str, Any], calibration: dict[str, Any]) -> str:
    """One line for a calibrated mode (``dynadapter calibrate`` and ``train``'s log): its threshold, its
    accuracy on the calibration set (with corrupted copies: on the clean images and on the copies too) and
    its share of the full FLOPs."""
    copies = calibration.get("corrupted_copies")
    accuracy = f"val accuracy {mode['accuracy']:.4f}"
    if copies:
        accuracy = (
            f"accuracy {mode['accuracy']:.4f} on val + {copies} corrupted "
            f"{'copy' if copies == 1 else 'copies'} (clean val {mode['val_accuracy']:.4f}, "
            f"corrupted {mode['corrupted_accuracy']:.4f})"
        )
    return f"{name:<8} threshold {mode['threshold']:.4f}: {accuracy}, {100 * mode['flops_fraction']:.1f}% of full FLOPs"
