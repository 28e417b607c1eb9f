import numpy as np
import pytest

from dynadapter.training.calibration import budget_curve, calibrate, choose_modes, exit_indices, simulate, sweep

CUM = [1.0, 2.0, 3.0, 4.0]


def one_hot_logits(classes: np.ndarray, confidence_logit: np.ndarray, num_classes: int = 3) -> np.ndarray:
    out = np.zeros((*classes.shape, num_classes))
    np.put_along_axis(out, classes[..., None], confidence_logit[..., None], axis=-1)
    return out


def test_exit_rule_first_confident_exit_last_always_answers() -> None:
    conf = np.array([[0.9, 0.2, 0.2], [0.95, 0.8, 0.1], [0.99, 0.2, 0.3], [0.5, 0.5, 0.5]])
    assert exit_indices(conf, 0.8).tolist() == [0, 1, 3]
    assert exit_indices(conf, 0.0).tolist() == [0, 0, 0]
    assert exit_indices(conf, 1.0).tolist() == [3, 3, 3]
    # a saturated confidence of exactly 1.0 still does not leave early at threshold 1
    assert exit_indices(np.ones((4, 2)), 1.0).tolist() == [3, 3]


def test_simulate_counts_accuracy_score_flops_and_fractions() -> None:
    conf = np.array([[0.9, 0.2], [0.9, 0.9], [0.1, 0.1], [0.5, 0.5]])
    predicted = np.array([[1, 0], [1, 2], [1, 1], [1, 1]])
    row = simulate(conf, predicted, np.array([1, 1]), CUM, 0.8)
    assert row["exit_fractions"] == [0.5, 0.5, 0.0, 0.0]
    assert row["accuracy"] == 0.5  # image 1 leaves at exit 1 with answer 2: wrong
    assert row["disagreement"] == 0.5  # ... where the last exit would have said 1
    assert row["score"] == pytest.approx(0.5 - 1 / 2)  # one standard error: sqrt(1) / 2
    assert row["gflops"] == pytest.approx(1.5)
    assert row["flops_fraction"] == pytest.approx(1.5 / 4.0)
    full = simulate(conf, predicted, np.array([1, 1]), CUM, 1.0)
    assert full["score"] == full["accuracy"] == 1.0 and full["disagreement"] == 0.0


def test_threshold_one_costs_the_last_exit_less_the_skipped_early_heads() -> None:
    conf = np.array([[0.9, 0.2], [0.9, 0.9], [0.1, 0.1], [0.5, 0.5]])
    predicted = np.ones((4, 2), dtype=int)
    near_one = simulate(conf, predicted, np.array([1, 1]), CUM, 0.999999, early_heads_gflops=0.3)
    full = simulate(conf, predicted, np.array([1, 1]), CUM, 1.0, early_heads_gflops=0.3)
    assert near_one["exit_fractions"] == full["exit_fractions"] == [0.0, 0.0, 0.0, 1.0]
    assert near_one["gflops"] == pytest.approx(4.0)  # the heads run: an image could have left
    assert full["gflops"] == pytest.approx(3.7) and full["flops_fraction"] == pytest.approx(3.7 / 4.0)


def test_modes_follow_their_definitions() -> None:
    rng = np.random.default_rng(0)
    n = 400
    targets = rng.integers(0, 3, n)
    # deeper exits are more often right and more confident
    logits = np.stack(
        [
            one_hot_logits(np.where(rng.random(n) < acc, targets, (targets + 1) % 3), rng.uniform(0, 4 + 2 * k, n))
            for k, acc in enumerate([0.7, 0.8, 0.9, 0.95])
        ]
    )
    result = calibrate(logits, targets, CUM)
    table, modes = result["calibration"]["table"], result["modes"]
    best = max(r["score"] for r in table)
    assert modes["fast"]["flops_fraction"] <= 0.30 and modes["balanced"]["flops_fraction"] <= 0.50
    balanced = next(r for r in table if r["threshold"] == modes["balanced"]["threshold"])
    assert balanced["score"] == max(r["score"] for r in table if r["flops_fraction"] <= 0.5)
    assert modes["fast"]["flops_fraction"] <= modes["balanced"]["flops_fraction"] <= modes["accurate"]["flops_fraction"]
    assert modes["accurate"]["flops_fraction"] == max(
        modes["balanced"]["flops_fraction"], min(r["flops_fraction"] for r in table if r["score"] >= best - 0.005)
    )
    assert result["calibration"]["num_samples"] == n


def test_budget_curve_is_monotone_and_respects_budgets() -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 3, 200)
    logits = rng.normal(size=(4, 200, 3)) * np.array([1, 2, 3, 4])[:, None, None]
    table = sweep(logits, targets, CUM)
    curve = budget_curve(table)
    assert curve, "a 4-exit model with equal stages fits budgets from 0.25 up"
    assert all(e["flops_fraction"] <= e["budget"] + 1e-12 for e in curve)
    score = {r["threshold"]: r["score"] for r in table}
    scores = [score[e["threshold"]] for e in curve]
    assert scores == sorted(scores)  # a larger budget never picks a worse-scoring threshold
    assert curve[0]["budget"] == 0.25


def test_mode_falls_back_to_the_cheapest_row_when_no_row_fits() -> None:
    table = [{"threshold": t, "accuracy": 0.9, "score": 0.9, "flops_fraction": f} for t, f in [(0.0, 0.6), (1.0, 1.0)]]
    modes = choose_modes(table)
    assert modes["fast"]["threshold"] == 0.0 and modes["balanced"]["threshold"] == 0.0


def test_accurate_does_not_collapse_to_the_first_exit_when_early_exits_beat_the_last() -> None:
    table = [
        {"threshold": 0.0, "accuracy": 0.910, "score": 0.90, "flops_fraction": 0.31},
        {"threshold": 0.9, "accuracy": 0.938, "score": 0.93, "flops_fraction": 0.39},
        {"threshold": 1.0, "accuracy": 0.912, "score": 0.912, "flops_fraction": 1.0},
    ]
    assert choose_modes(table)["accurate"]["threshold"] == 0.9


def test_accurate_is_never_cheaper_or_less_accurate_than_balanced() -> None:
    table = [
        {"threshold": 0.7, "accuracy": 0.950, "score": 0.950, "flops_fraction": 0.38},
        {"threshold": 0.85, "accuracy": 0.955, "score": 0.955, "flops_fraction": 0.45},
        {"threshold": 1.0, "accuracy": 0.945, "score": 0.945, "flops_fraction": 1.0},
    ]
    modes = choose_modes(table)
    assert modes["balanced"]["threshold"] == 0.85 and modes["accurate"]["threshold"] == 0.85


def test_a_lucky_early_threshold_loses_to_a_well_supported_one() -> None:
    # Raw accuracy ties; the cheaper row differs from the last exit on 16 of 200 images, the other
    # on 1: the score prefers the one whose accuracy rests on more evidence.
    table = [
        {"threshold": 0.6, "accuracy": 0.95, "score": 0.95 - 4 / 200, "flops_fraction": 0.35},
        {"threshold": 0.9, "accuracy": 0.95, "score": 0.95 - 1 / 200, "flops_fraction": 0.47},
        {"threshold": 1.0, "accuracy": 0.945, "score": 0.945, "flops_fraction": 1.0},
    ]
    assert choose_modes(table)["balanced"]["threshold"] == 0.9
