"""Calibration: from per-exit logits on the validation split to thresholds, modes and budgets.

Dynamic inference (README, "Method"): an image leaves at the first exit whose confidence (max softmax
probability) reaches the threshold; the last exit always answers; threshold >= 1 runs to the end,
and then without the early exit heads (the served segments skip a head no image can use), so that
row costs the early heads' FLOPs less than the last exit's cumulative cost.
Sweeping the threshold traces accuracy against mean FLOPs; the named modes (docs/model-repository.md) and the
FLOPs budgets of the service's ``budget`` knob are read off that table. Pure numpy.

A validation split of 200 images (VTAB-1k) measures accuracy in steps of half a point, so the
raw "most accurate row" is often a lucky threshold that does not carry over to new images. Rows
are therefore ranked by a pessimistic score: the accuracy minus one standard error of its
difference to the full-depth model, ``sqrt(d) / n`` for the ``d`` of ``n`` images whose answer
differs from the last exit's (a paired comparison: only those images can make the two differ).
Thresholds that send many images out early on thin evidence score lower than their raw accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dynadapter.contract import softmax

#: Fine near 1: a well-trained exit's confidences crowd there.
THRESHOLD_GRID = np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-5, -2, 13)]), 6))
BUDGETS = np.round(np.arange(0.05, 1.0001, 0.05), 2)
ACCURATE_TOLERANCE = 0.005  # "accurate": within 0.5 points of the last exit
MODE_BUDGETS = {"fast": 0.30, "balanced": 0.50}
MARGIN_Z = 1.0  # standard errors subtracted in the pessimistic score


def softmax_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability, argmax) over the last axis, with the service's own softmax."""
    p = softmax(logits)
    return p.max(axis=-1), p.argmax(axis=-1)


def exit_indices(confidence: np.ndarray, threshold: float) -> np.ndarray:
    """Exit taken by each image: confidence [K, N] -> [N] ints."""
    k = confidence.shape[0]
    if threshold >= 1.0 or k == 1:  # a single exit (static model) always answers
        return np.full(confidence.shape[1], k - 1)
    leaves = confidence[:-1] >= threshold
    return np.where(leaves.any(axis=0), leaves.argmax(axis=0), k - 1)


def simulate(
    confidence: np.ndarray,
    predicted: np.ndarray,
    targets: np.ndarray,
    cumulative_gflops: Sequence[float],
    threshold: float,
    early_heads_gflops: float = 0.0,
) -> dict[str, Any]:
    """One row of the table at ``threshold``: accuracy, its pessimistic score, mean GFLOPs and exit
    fractions. ``confidence`` and ``predicted`` are [K, N], ``targets`` [N]; ``early_heads_gflops``:
    the exit heads before the last, which threshold 1 skips."""
    k, n = confidence.shape
    exits = exit_indices(confidence, threshold)
    answers = predicted[exits, np.arange(n)]
    accuracy = float((answers == targets).mean())
    differ = int((answers != predicted[-1]).sum())
    cum = np.asarray(cumulative_gflops, dtype=np.float64)
    gflops = float(cum[exits].mean()) - (early_heads_gflops if threshold >= 1.0 else 0.0)
    return {
        "threshold": float(threshold),
        "accuracy": accuracy,
        "score": accuracy - MARGIN_Z * differ**0.5 / n,
        "disagreement": differ / n,
        "gflops": gflops,
        "flops_fraction": gflops / float(cum[-1]),
        "exit_fractions": (np.bincount(exits, minlength=k) / n).tolist(),
    }


def sweep(
    logits: np.ndarray,
    targets: np.ndarray,
    cumulative_gflops: Sequence[float],
    thresholds: Sequence[float] = THRESHOLD_GRID,
    early_heads_gflops: float = 0.0,
) -> list[dict[str, Any]]:
    confidence, predicted = softmax_confidence(np.asarray(logits, dtype=np.float64))
    return [
        simulate(confidence, predicted, np.asarray(targets), cumulative_gflops, t, early_heads_gflops)
        for t in thresholds
    ]


def best_under(table: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    """Best-scoring row with flops_fraction <= budget (cheapest on ties); the cheapest row if none fits."""
    fits = [r for r in table if r["flops_fraction"] <= budget + 1e-12]
    if not fits:
        return min(table, key=lambda r: r["flops_fraction"])
    return max(fits, key=lambda r: (r["score"], -r["flops_fraction"]))


def choose_modes(table: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The named modes (docs/model-repository.md), read off the validation table.

    ``balanced`` / ``fast``: the best-scoring row within 50% / 30% of full FLOPs (the cheapest on
    ties). ``accurate``: the cheapest row scoring within 0.5 points of the last exit's accuracy, or
    of the best score where a threshold beats the last exit (common on small tasks: otherwise
    ``accurate`` could fall back to the first exit). The last exit's score is its accuracy. Modes
    stay ordered, fast <= balanced <= accurate in cost: ``fast`` is capped by ``balanced``'s FLOPs,
    and ``accurate`` is at least ``balanced``.
    """
    reference = max(r["score"] for r in table)  # >= the last exit's accuracy, whose score it is
    close = [r for r in table if r["score"] >= reference - ACCURATE_TOLERANCE]
    balanced = best_under(table, MODE_BUDGETS["balanced"])
    fast = best_under(table, min(MODE_BUDGETS["fast"], balanced["flops_fraction"]))
    accurate = min(close, key=lambda r: (r["flops_fraction"], -r["accuracy"]))
    if accurate["flops_fraction"] < balanced["flops_fraction"]:
        accurate = balanced
    return {"fast": _mode(fast), "balanced": _mode(balanced), "accurate": _mode(accurate)}


def _mode(row: dict[str, Any]) -> dict[str, float]:
    return {"threshold": row["threshold"], "accuracy": row["accuracy"], "flops_fraction": row["flops_fraction"]}


def budget_curve(table: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for b in BUDGETS:
        row = best_under(table, float(b))
        if row["flops_fraction"] <= b + 1e-12:
            out.append({"budget": float(b), **_mode(row)})
    return out


def calibrate(
    logits: Any, targets: Any, cumulative_gflops: Sequence[float], early_heads_gflops: float = 0.0
) -> dict[str, Any]:
    """The manifest's ``calibration`` and ``modes`` from validation logits [K, N, C]."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    table = sweep(logits, targets, cumulative_gflops, early_heads_gflops=early_heads_gflops)
    return {
        "calibration": {
            "split": "val",
            "num_samples": int(targets.shape[0]),
            "table": table,
            "budgets": budget_curve(table),
        },
        "modes": choose_modes(table),
    }
