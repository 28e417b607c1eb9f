"""The operating point at which ``dynadapter bench serve`` judges speed: equal accuracy (issue 19).

A mode's threshold is calibrated on the validation split; on the images the bench sends it may be
more or less accurate than the static graph, and a speed-up bought with accuracy says little. So
beside the named modes the bench serves the cheapest threshold of the model's calibration table
whose accuracy on the very images sent is within ``TOLERANCE`` (0.5 points) of the static graph's.
The accuracies come from the run's per-exit logits in PyTorch (the static graph is the same
weights' last exit, ``bench/serving/static_graph.py``); the served accuracy is measured again over HTTP.
Chosen on the measured images, it is an oracle for matching accuracy, not a calibration to deploy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

TOLERANCE = 0.005


def cheapest_within(rows: Sequence[dict[str, Any]], reference: float, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The row of least ``gflops`` whose ``accuracy`` >= ``reference - tolerance`` (the more accurate on
    ties); the most accurate row when none is close enough."""
    close = [r for r in rows if r["accuracy"] >= reference - tolerance - 1e-12]
    if not close:
        return max(rows, key=lambda r: (r["accuracy"], -r["gflops"]))
    return min(close, key=lambda r: (r["gflops"], -r["accuracy"]))


def operating_point(run_dir: Path, thresholds: Sequence[float], count: int) -> dict[str, Any]:
    """The equal-accuracy point among ``thresholds`` (the manifest's calibration table) on the first
    ``count`` images of the run's test split (the ones the bench sends).

    Returns the threshold, its accuracy, GFLOPs and flops fraction on those images, the static
    graph's accuracy there, and how many thresholds were candidates.
    """
    from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
    from dynadapter.training.calibration import sweep
    from dynadapter.training.evaluate import split_logits
    from dynadapter.training.run_dir import load_run

    run = load_run(run_dir)
    logits, targets = split_logits(run, None, "test")
    logits, targets = logits[:, :count].numpy(), targets[:count].numpy()
    static_accuracy = float((logits[-1].argmax(-1) == targets).mean())
    rows = sweep(logits, targets, deployed_cumulative_gflops(run.model), thresholds, early_heads_gflops(run.model))
    chosen = cheapest_within(rows, static_accuracy)
    return {
        "threshold": chosen["threshold"],
        "accuracy": chosen["accuracy"],
        "gflops": chosen["gflops"],
        "flops_fraction": chosen["flops_fraction"],
        "static_accuracy": static_accuracy,
        "within_tolerance": chosen["accuracy"] >= static_accuracy - TOLERANCE - 1e-12,
        "candidates": len(rows),
        "images": int(len(targets)),
    }
