"""Evaluation: per-exit accuracy and the accuracy/FLOPs trade-off of dynamic inference."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from dynadapter.errors import DataError
from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training import run_dir as rd
from dynadapter.training.calibration import sweep
from dynadapter.training.data import ImageDataset, run_split, stream
from dynadapter.training.exit_health import health_record, losing_exits
from dynadapter.training.plots import plot_accuracy_vs_gflops
from dynadapter.training.run_dir import Run, load_run

REPORT_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@torch.no_grad()
def loader_logits(
    model: DynamicViT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every exit [K, N, C] (float32, CPU, eval mode) and targets [N] for (images, targets)
    batches, e.g. a DataLoader streaming a split."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks, targets = [], []
    for images, target in batches:
        chunks.append(torch.stack(model(images.to(device))).float().cpu())
        targets.append(target)
    model.train(was_training)
    return torch.cat(chunks, dim=1), torch.cat(targets)


def exit_accuracies(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    return (logits.argmax(-1) == targets[None]).float().mean(1).tolist()


def split_dataset(run: Run, data: str | None, split: str) -> ImageDataset:
    """The split the run recorded (its file list, so that no image crosses splits) as model inputs;
    DataError if it is empty."""
    source = run_split(run.path or Path("."), run.config, split, data)
    if len(source) == 0:
        raise DataError(f"the {split} split of {data or run.config.data} is empty (try --split val)")
    return ImageDataset(source, run.preprocessing, run.config.train.max_pixels)


def split_logits(run: Run, data: str | None, split: str, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits [K, N, C] and the targets [N] on a split: the one the run recorded (its file
    list), so that no image crosses splits; DataError if it is empty."""
    dataset = split_dataset(run, data, split)
    return loader_logits(run.model, stream(dataset, min(workers, run.config.train.workers)))


def evaluate_run(
    run_dir: Path, data: str | None = None, split: str = "test", baselines: Sequence[Path] = ()
) -> dict[str, Any]:
    """Per-exit accuracy, the threshold sweep, the calibrated modes, baselines and the exits that lose to an
    earlier one (``exit_health``, training/exit_health.py) on ``split`` of ``data`` (default: the run's own);
    ``calibrated``: the modes as chosen on the validation split, with their validation accuracy.

    Writes ``<report_name(...)>.json`` and its plot ``.png`` into the run directory: ``eval_<split>`` on the
    run's own data, ``eval_<split>@<slug>`` on other data (beside it, not over it). The plot's title names the
    data evaluated. Each baseline run (e.g. the static model, ``--static``) is a point: its last exit, full cost.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    logits, targets = split_logits(run, data, split)
    cum, heads = deployed_cumulative_gflops(run.model), early_heads_gflops(run.model)
    calibrated = rd.read_calibration(run_dir)["modes"] if rd.has_calibration(run_dir) else {}
    modes = dict(
        zip(
            calibrated,
            sweep(logits.numpy(), targets.numpy(), cum, [m["threshold"] for m in calibrated.values()], heads),
            strict=True,
        )
    )
    evaluated = data or run.config.data
    report = {
        "data": evaluated,
        "split": split,
        "num_samples": len(targets),
        "exits": run.model.config.exits,
        "cumulative_gflops": cum,
        "exit_accuracy": exit_accuracies(logits, targets),
        "sweep": sweep(logits.numpy(), targets.numpy(), cum, early_heads_gflops=heads),
        "modes": modes,
        # the modes as calibrated on the validation split: val accuracy and, by bootstrap, the spread
        "calibrated": calibrated,
        "baselines": {str(b): baseline_point(Path(b), evaluated, split) for b in baselines},
        "exit_health": health_record(losing_exits(logits, targets, run.model.config.exits), split, len(targets)),
    }
    name = report_name(run.config, data, split)
    rd.write_report(run_dir, name, report)
    plot_accuracy_vs_gflops(
        report["sweep"],
        list(zip(cum, report["exit_accuracy"], strict=True)),
        modes,
        {_baseline_label(Path(b)): tuple(p.values()) for b, p in report["baselines"].items()},
        run_dir / f"{name}.png",
        f"{evaluated} ({split}, {len(targets)} images)",
    )
    return report


def report_name(config: rd.RunConfig, data: str | None, split: str) -> str:
    """The stem `evaluate_run` writes its report and plot under: the run's own data (``data`` None or the one
    it trained on, as `run_split` takes it) keeps ``eval_<split>``; other data gets ``eval_<split>@<slug>``."""
    own = data is None or data == config.data
    return rd.eval_report_name(split, None if own else data)


def baseline_point(run_dir: Path, data: str, split: str) -> dict[str, float]:
    """A baseline run's full-depth (last exit) GFLOPs and accuracy."""
    run = load_run(run_dir)
    logits, targets = split_logits(run, data, split)
    return {"gflops": deployed_cumulative_gflops(run.model)[-1], "accuracy": exit_accuracies(logits, targets)[-1]}


def _baseline_label(run_dir: Path) -> str:
    cfg = rd.read_config(run_dir)
    kind = "static" if len(cfg.model["exits"]) == 1 else "dynamic"
    return f"{cfg.model['petl']} {kind} ({run_dir.name})"


def recalibrate_run(run_dir: Path) -> dict[str, Any]:
    """Calibrate a trained run again (e.g. after the mode rules changed) on the calibration set its training
    used: its validation split and, where it was trained with ``--calibration-corrupted``, the same corrupted
    copies (`calibration_set.calibrate_set`, with its recorded options: the same thresholds as training chose)."""
    # calibration_set builds on this module's loader_logits: imported here, not at the top
    from dynadapter.training.calibration_set import calibrate_set

    run = load_run(run_dir)
    result = calibrate_set(run.model, split_dataset(run, None, "val"), run.config.train)
    rd.write_calibration(run_dir, result)
    return result
