import numpy as np
import pytest

from dynadapter.training.calibration import (
    budget_curve,
    calibrate,
    choose_modes,
    resample_counts,
    simulate,
    spread_text,
    sweep,
)

CUM = [1.0, 2.0, 3.0, 4.0]


def one_hot_logits(classes: np.ndarray, confidence_logit: np.ndarray, num_classes: int = 3) -> np.ndarray:
    out = np.zeros((*classes.shape, num_classes))
    np.put_along_axis(out, classes[..., None], confidence_logit[..., None], axis=-1)
    return out


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
    result = calibrate(logits, targets, CUM, resamples=0)  # the single choice on the split
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


def knife_edge() -> tuple[np.ndarray, np.ndarray]:
    """Two exits (1 and 4 GFLOPs), 40 images of class 0: the last exit is always right; exit 0 is
    wrong on 5 images spread over its confidence range, so near-equal scores at several thresholds
    under the 50% budget put the single ``balanced`` choice on a knife edge."""
    n = 40
    right = np.ones(n, dtype=bool)
    right[[5, 12, 20, 27, 33]] = False
    logits = np.zeros((2, n, 3))
    logits[0, np.arange(n), np.where(right, 0, 1)] = np.linspace(0.2, 3.0, n)
    logits[1, :, 0] = 2.0
    return logits, np.zeros(n, dtype=int)


def loop_bootstrap(logits: np.ndarray, targets: np.ndarray, cum: list[float], resamples: int, seed: int) -> dict:
    """The bootstrap by the plain path: each resample's images materialised, swept and chosen one by
    one with ``sweep`` / ``choose_modes``; the lower median and the 5th/95th percentiles by sorting."""
    n = len(targets)
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)
    chosen: dict[str, list[float]] = {"fast": [], "balanced": [], "accurate": []}
    oob: dict[str, list[float]] = {"fast": [], "balanced": [], "accurate": []}
    for c in counts:
        idx = np.repeat(np.arange(n), c)
        left_out = np.flatnonzero(c == 0)
        for name, mode in choose_modes(sweep(logits[:, idx], targets[idx], cum)).items():
            chosen[name].append(mode["threshold"])
            oob[name].append(sweep(logits[:, left_out], targets[left_out], cum, [mode["threshold"]])[0]["accuracy"])
    out = {}
    for name, values in chosen.items():
        ordered = sorted(values)
        out[name] = {
            "median": ordered[(resamples - 1) // 2],
            "low": ordered[int(np.ceil(0.05 * resamples)) - 1],
            "high": ordered[int(np.ceil(0.95 * resamples)) - 1],
            "std": float(np.std(values, ddof=1)),
            "oob": float(np.mean(oob[name])),
        }
    return out


def test_bootstrap_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    logits, targets = knife_edge()
    first, again = calibrate(logits, targets, [1.0, 4.0], seed=7), calibrate(logits, targets, [1.0, 4.0], seed=7)
    assert first["modes"] == again["modes"]
    assert first["calibration"]["resamples"] == 200 and first["calibration"]["resample_seed"] == 7
    other = calibrate(logits, targets, [1.0, 4.0], seed=8)
    assert other["modes"]["balanced"]["spread"] != first["modes"]["balanced"]["spread"]
    assert resample_counts(40, 3, 0).sum(axis=1).tolist() == [40, 40, 40]


def test_bootstrap_on_a_knife_edge_matches_the_plain_loop() -> None:
    logits, targets = knife_edge()
    result = calibrate(logits, targets, [1.0, 4.0], resamples=200, seed=0)
    modes, table = result["modes"], result["calibration"]["table"]
    single = calibrate(logits, targets, [1.0, 4.0], resamples=0)["modes"]
    # the single choice sits at the edge of the bootstrap's choices; the median is a safer row
    assert single["balanced"]["threshold"] == modes["balanced"]["spread"]["single_threshold"] == 0.595
    assert modes["balanced"]["threshold"] == 0.47
    assert (modes["balanced"]["spread"]["threshold_low"], modes["balanced"]["spread"]["threshold_high"]) == (0.0, 0.595)
    loop = loop_bootstrap(logits, targets, [1.0, 4.0], 200, 0)
    for name, mode in modes.items():
        spread = mode["spread"]
        assert mode["threshold"] == loop[name]["median"]
        assert (spread["threshold_low"], spread["threshold_high"]) == (loop[name]["low"], loop[name]["high"])
        assert spread["threshold_std"] == pytest.approx(loop[name]["std"], abs=1e-12)
        assert spread["oob_accuracy"] == pytest.approx(loop[name]["oob"], abs=1e-12)
        row = next(r for r in table if r["threshold"] == mode["threshold"])  # the mode is a row of the table
        assert (mode["accuracy"], mode["flops_fraction"]) == (row["accuracy"], row["flops_fraction"])
    assert modes["balanced"]["accuracy"] == 0.9 and modes["balanced"]["flops_fraction"] == 0.3625


def test_bootstrap_accuracy_spread_is_the_reported_thresholds_accuracy_over_the_resamples() -> None:
    logits, targets = knife_edge()
    mode = calibrate(logits, targets, [1.0, 4.0], resamples=50, seed=3)["modes"]["balanced"]
    counts = resample_counts(40, 50, 3)
    accs = []
    for c in counts:
        idx = np.repeat(np.arange(40), c)
        accs.append(sweep(logits[:, idx], targets[idx], [1.0, 4.0], [mode["threshold"]])[0]["accuracy"])
    ordered = sorted(accs)
    assert mode["spread"]["accuracy_low"] == pytest.approx(ordered[2])  # ceil(0.05 * 50) = 3rd smallest
    assert mode["spread"]["accuracy_high"] == pytest.approx(ordered[47])  # ceil(0.95 * 50) = 48th
    assert mode["spread"]["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))


def test_bootstrap_modes_keep_their_budgets_and_order() -> None:
    rng = np.random.default_rng(0)
    n = 200
    targets = rng.integers(0, 3, n)
    logits = np.stack(
        [
            one_hot_logits(np.where(rng.random(n) < acc, targets, (targets + 1) % 3), rng.uniform(0, 4 + 2 * k, n))
            for k, acc in enumerate([0.7, 0.8, 0.9, 0.95])
        ]
    )
    modes = calibrate(logits, targets, CUM)["modes"]
    assert modes["fast"]["flops_fraction"] <= 0.30 and modes["balanced"]["flops_fraction"] <= 0.50
    assert modes["fast"]["flops_fraction"] <= modes["balanced"]["flops_fraction"] <= modes["accurate"]["flops_fraction"]
    for mode in modes.values():
        s = mode["spread"]
        assert s["threshold_low"] <= s["threshold_high"] and s["accuracy_low"] <= s["accuracy_high"]


def test_spread_text_shows_the_interval_single_choice_and_out_of_bag_accuracy() -> None:
    logits, targets = knife_edge()
    mode = calibrate(logits, targets, [1.0, 4.0], resamples=200, seed=0)["modes"]["balanced"]
    assert spread_text(mode) == (
        "bootstrap 5-95%: threshold 0.0000-0.5950 (single choice 0.5950), val accuracy 82.5-97.5%, out-of-bag 87.9%"
    )
    assert spread_text({"threshold": 0.5, "accuracy": 0.9, "flops_fraction": 0.4}) == ""
