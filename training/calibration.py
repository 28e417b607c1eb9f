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

Even so, one choice on 200 images is noisy: two runs of one recipe put ``balanced`` at 0.70 and far
higher (issue #19). ``calibrate`` therefore chooses each mode on ``resamples`` bootstrap resamples of
the validation split (Efron & Tibshirani, "An Introduction to the Bootstrap", 1993) and reports the
median of those choices, with their spread (``bootstrap_modes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dynadapter.contract import exit_indices, softmax
from dynadapter.training.options import TrainOptions

#: Fine near 1: a well-trained exit's confidences crowd there.
THRESHOLD_GRID = np.unique(np.round(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.logspace(-5, -2, 13)]), 6))
BUDGETS = np.round(np.arange(0.05, 1.0001, 0.05), 2)
ACCURATE_TOLERANCE = 0.005  # "accurate": within 0.5 points of the last exit
MODE_BUDGETS = {"fast": 0.30, "balanced": 0.50}
MARGIN_Z = 1.0  # standard errors subtracted in the pessimistic score
#: Bootstrap resamples of the validation split per calibration (0: one choice on the split itself).
BOOTSTRAP_RESAMPLES = 200
#: The reported interval of a mode's threshold and accuracy over the resamples: 5th to 95th percentile.
SPREAD_QUANTILES = (0.05, 0.95)


def softmax_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability, argmax) over the last axis, with the service's own softmax."""
    p = softmax(logits)
    return p.max(axis=-1), p.argmax(axis=-1)


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
    correct, differs, cost = _image_outcomes(predicted, targets, cumulative_gflops, exits)
    accuracy = float(correct.mean())
    differ = int(differs.sum())
    cum = np.asarray(cumulative_gflops, dtype=np.float64)
    gflops = float(cost.mean()) - (early_heads_gflops if threshold >= 1.0 else 0.0)
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


def grid_outcomes(
    confidence: np.ndarray,
    predicted: np.ndarray,
    targets: np.ndarray,
    cumulative_gflops: Sequence[float],
    thresholds: Sequence[float],
    early_heads_gflops: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per threshold and image [T, N]: answered correctly (0/1), answer differs from the last exit's
    (0/1), GFLOPs spent -- what ``simulate`` averages, kept per image so that any weighting of the
    images (a bootstrap resample) is one matrix product."""
    exits = np.stack([exit_indices(confidence, t) for t in thresholds])
    correct, differs, cost = _image_outcomes(predicted, targets, cumulative_gflops, exits)
    skipped = np.where(np.asarray(thresholds, dtype=np.float64) >= 1.0, early_heads_gflops, 0.0)
    return correct.astype(np.float64), differs.astype(np.float64), cost - skipped[:, None]


def _image_outcomes(
    predicted: np.ndarray, targets: np.ndarray, cumulative_gflops: Sequence[float], exits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image (``exits`` [N], or [T, N] for several thresholds): answered correctly, answer differs
    from the last exit's, GFLOPs up to its exit (every head run)."""
    answers = predicted[exits, np.arange(predicted.shape[1])]
    cum = np.asarray(cumulative_gflops, dtype=np.float64)
    return answers == targets, answers != predicted[-1], cum[exits]


def resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] bootstrap counts: how often each of ``n`` images is drawn (with replacement, n
    draws) in each resample; numpy's seeded generator, so one seed gives one set of resamples."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)


def bootstrap_modes(
    logits: Any,
    targets: Any,
    cumulative_gflops: Sequence[float],
    table: list[dict[str, Any]],
    early_heads_gflops: float = 0.0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The named modes chosen by bootstrap, each with its spread; ``table`` is the split's own sweep.

    ``choose_modes`` runs on each of ``resamples`` resamples of the validation images (the same
    threshold grid as ``table``; tables computed together as matrix products). The reported threshold
    of a mode is the median of its resamples' choices (the lower median: a threshold that was chosen,
    a row of ``table``) -- the bagged choice (Breiman, "Bagging predictors", 1996), stable where the
    single choice jumps between near-equal rows. The median rather than a conservative quantile: a
    higher threshold buys accuracy with FLOPs, which the modes' budgets already decide. ``fast`` and
    ``balanced`` then step down to the highest threshold that keeps their budget on the whole split,
    and the modes keep their order (``choose_modes``). Accuracy and ``flops_fraction`` are ``table``'s.

    ``spread`` (all fractions, thresholds in [0, 1]): ``single_threshold``, the choice on the split
    itself; ``threshold_low``/``_high``, the 5th/95th percentile of the resamples' choices, and
    ``threshold_std``; ``accuracy_low``/``_high``/``_std``, the reported threshold's accuracy over the
    resamples; ``oob_accuracy``, the mean over resamples of each resample's choice's accuracy on the
    images that resample left out (the leave-one-out bootstrap, Efron & Tibshirani 1997, "Improvements
    on cross-validation: the .632+ bootstrap method"): how the choice carries over to unseen images.
    """
    confidence, predicted = softmax_confidence(np.asarray(logits, dtype=np.float64))
    targets = np.asarray(targets)
    n = targets.shape[0]
    thresholds = np.array([r["threshold"] for r in table])
    correct, differs, cost = grid_outcomes(
        confidence, predicted, targets, cumulative_gflops, thresholds, early_heads_gflops
    )
    counts = resample_counts(n, resamples, seed).astype(np.float64)
    accuracy, disagreement = counts @ correct.T / n, counts @ differs.T / n  # [B, T]
    score = accuracy - MARGIN_Z * np.sqrt(disagreement * n) / n
    fraction = counts @ cost.T / n / float(cumulative_gflops[-1])
    out_of_bag = counts == 0
    oob_accuracy = (out_of_bag @ correct.T) / np.maximum(out_of_bag.sum(axis=1, keepdims=True), 1)
    chosen: dict[str, list[int]] = {m: [] for m in ("fast", "balanced", "accurate")}
    for b in range(resamples):
        rows = [
            {"threshold": float(t), "accuracy": a, "score": s, "flops_fraction": f, "index": i}
            for i, (t, a, s, f) in enumerate(zip(thresholds, accuracy[b], score[b], fraction[b], strict=True))
        ]
        for name, row in choose_modes_rows(rows).items():
            chosen[name].append(row["index"])
    single = choose_modes(table)
    at = {name: _lower_median(thresholds[idx]) for name, idx in chosen.items()}
    modes = _ordered(table, at)
    spread_of = {
        name: {
            "single_threshold": single[name]["threshold"],
            **_spread(thresholds[idx], "threshold"),
            **_spread(accuracy[:, _row_index(table, modes[name]["threshold"])], "accuracy"),
            "oob_accuracy": float(oob_accuracy[np.arange(resamples), idx].mean()),
        }
        for name, idx in chosen.items()
    }
    return {name: {**mode, "spread": spread_of[name]} for name, mode in modes.items()}


def choose_modes_rows(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``choose_modes``, returning the chosen rows themselves (with any extra keys they carry)."""
    by_threshold = {r["threshold"]: r for r in table}
    return {name: by_threshold[m["threshold"]] for name, m in choose_modes(table).items()}


def _lower_median(values: np.ndarray) -> float:
    return float(np.quantile(values, 0.5, method="lower"))


def _spread(values: np.ndarray, name: str) -> dict[str, float]:
    low, high = np.quantile(values, SPREAD_QUANTILES, method="inverted_cdf")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {f"{name}_low": float(low), f"{name}_high": float(high), f"{name}_std": std}


def _row_index(table: list[dict[str, Any]], threshold: float) -> int:
    return next(i for i, r in enumerate(table) if r["threshold"] == threshold)


def _ordered(table: list[dict[str, Any]], thresholds: dict[str, float]) -> dict[str, dict[str, float]]:
    """The modes at these thresholds (rows of ``table``): ``fast`` and ``balanced`` stepped down to
    the highest threshold within their FLOPs budget where they exceed it (flops grow with the
    threshold below 1), ``fast`` no dearer than ``balanced``, ``accurate`` no cheaper."""

    def within(threshold: float, budget: float) -> dict[str, Any]:
        row = table[_row_index(table, threshold)]
        if row["flops_fraction"] <= budget + 1e-12:
            return row
        fits = [r for r in table if r["threshold"] <= threshold and r["flops_fraction"] <= budget + 1e-12]
        return max(fits, key=lambda r: r["threshold"]) if fits else row

    balanced = within(thresholds["balanced"], MODE_BUDGETS["balanced"])
    fast = within(thresholds["fast"], MODE_BUDGETS["fast"])
    if fast["flops_fraction"] > balanced["flops_fraction"]:
        fast = balanced
    accurate = table[_row_index(table, thresholds["accurate"])]
    if accurate["flops_fraction"] < balanced["flops_fraction"]:
        accurate = balanced
    return {"fast": _mode(fast), "balanced": _mode(balanced), "accurate": _mode(accurate)}


def spread_text(mode: dict[str, Any]) -> str:
    """A mode's bootstrap spread in one line for the command line ("" for a mode without one):
    the 5th-95th percentile of the threshold and of the validation accuracy (in %), the single
    choice on the split, and the out-of-bag accuracy."""
    s = mode.get("spread")
    if not s:
        return ""
    oob = f", out-of-bag {100 * s['oob_accuracy']:.1f}%" if s.get("oob_accuracy") is not None else ""
    return (
        f"bootstrap 5-95%: threshold {s['threshold_low']:.4f}-{s['threshold_high']:.4f} "
        f"(single choice {s['single_threshold']:.4f}), val accuracy "
        f"{100 * s['accuracy_low']:.1f}-{100 * s['accuracy_high']:.1f}%{oob}"
    )


def recorded_resampling(train: TrainOptions) -> dict[str, int]:
    """``calibrate``'s ``resamples`` and ``seed`` from a run's recorded training options (config.json's
    ``train``; a run recorded before ``calibration_resamples`` existed reads its default, `BOOTSTRAP_RESAMPLES`)."""
    return {"resamples": train.calibration_resamples, "seed": train.seed}


def calibrate(
    logits: Any,
    targets: Any,
    cumulative_gflops: Sequence[float],
    early_heads_gflops: float = 0.0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """The manifest's ``calibration`` and ``modes`` from validation logits [K, N, C]: with
    ``resamples`` > 0 the modes are chosen by bootstrap (``bootstrap_modes``, seeded by ``seed``) and
    carry their ``spread``; with 0, once on the split (``choose_modes``)."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    table = sweep(logits, targets, cumulative_gflops, early_heads_gflops=early_heads_gflops)
    calibration: dict[str, Any] = {
        "split": "val",
        "num_samples": int(targets.shape[0]),
        "table": table,
        "budgets": budget_curve(table),
    }
    if resamples <= 0 or targets.shape[0] == 0:  # nothing to resample
        return {"calibration": calibration, "modes": choose_modes(table)}
    modes = bootstrap_modes(logits, targets, cumulative_gflops, table, early_heads_gflops, resamples, seed)
    return {"calibration": {**calibration, "resamples": resamples, "resample_seed": seed}, "modes": modes}
