import pytest

from dynadapter.contract.model_repository import Manifest
from dynadapter.service.exit_policy import ExitPolicy, PolicyError, choose_policy, resolve_policy


def test_default_is_balanced(manifest: Manifest) -> None:
    assert resolve_policy(manifest) == ExitPolicy((0.6, 0.6), 0.6)


def test_explicit_threshold_applies_to_every_early_exit(manifest: Manifest) -> None:
    assert resolve_policy(manifest, threshold=0.25) == ExitPolicy((0.25, 0.25), 0.25)


def test_mode_vector_wins_over_its_scalar(manifest: Manifest) -> None:
    policy = resolve_policy(manifest, mode="accurate")
    assert policy.thresholds == (0.95, 0.9)
    assert policy.reported == (0.95, 0.9)


@pytest.mark.parametrize(
    ("budget", "thresholds"),
    [
        (0.1, (0.3, 0.3)),  # below every entry: the smallest entry
        (0.5, (0.3, 0.3)),  # exactly an entry
        (0.79, (0.3, 0.3)),  # the largest entry not above the request
        (0.8, (0.55, 0.7)),  # a per-exit vector from calibration
        (1.0, (1.0, 1.0)),
    ],
)
def test_budget_picks_the_largest_entry_not_above_it(
    manifest: Manifest, budget: float, thresholds: tuple[float, ...]
) -> None:
    assert resolve_policy(manifest, budget=budget).thresholds == thresholds


def test_two_knobs_are_refused(manifest: Manifest) -> None:
    with pytest.raises(PolicyError, match="at most one"):
        resolve_policy(manifest, threshold=0.5, budget=0.5)


def test_budget_without_calibration_is_refused(manifest: Manifest) -> None:
    calibration = manifest.calibration.model_copy(update={"budgets": []})
    bare = manifest.model_copy(update={"calibration": calibration})
    with pytest.raises(PolicyError, match="no FLOPs-budget calibration"):
        resolve_policy(bare, budget=0.5)


def test_as_array_has_one_value_per_early_exit(manifest: Manifest) -> None:
    assert resolve_policy(manifest, threshold=0.4).as_array().tolist() == [0.4, 0.4]


def live_thresholds(mode: str) -> tuple[float, ...]:
    """Live calibration's thresholds, as LiveCalibrator.thresholds gives them."""
    return {"fast": (0.4, 0.5), "balanced": (0.7, 0.8), "accurate": (0.97, 0.95)}[mode]


def test_no_knob_takes_the_controllers_point_or_else_the_default_mode(manifest: Manifest) -> None:
    assert choose_policy(manifest, operating_threshold=0.45) == ExitPolicy((0.45, 0.45), 0.45)
    assert choose_policy(manifest, mode="auto", operating_threshold=0.45) == ExitPolicy((0.45, 0.45), 0.45)
    assert choose_policy(manifest) == ExitPolicy((0.6, 0.6), 0.6)
    assert choose_policy(manifest, mode="auto") == ExitPolicy((0.6, 0.6), 0.6)
    with pytest.raises(PolicyError, match="at most one"):
        choose_policy(manifest, threshold=0.5, mode="auto")


def test_the_controllers_point_stays_between_the_live_fast_and_default_modes(manifest: Manifest) -> None:
    # Per exit: max(point, live fast), then at most the live default mode.
    assert choose_policy(manifest, operating_threshold=0.45, live=live_thresholds).thresholds == (0.45, 0.5)
    assert choose_policy(manifest, operating_threshold=0.75, live=live_thresholds).thresholds == (0.7, 0.75)


def test_a_named_mode_takes_its_live_thresholds_and_an_explicit_threshold_does_not(manifest: Manifest) -> None:
    assert choose_policy(manifest, mode="accurate", live=live_thresholds) == ExitPolicy((0.97, 0.95), (0.97, 0.95))
    assert choose_policy(manifest, live=live_thresholds) == ExitPolicy((0.7, 0.8), (0.7, 0.8))
    assert choose_policy(manifest, threshold=0.3, live=live_thresholds) == ExitPolicy((0.3, 0.3), 0.3)
