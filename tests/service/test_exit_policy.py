import pytest

from dynadapter.contract.model_repository import Manifest
from dynadapter.service.exit_policy import ExitPolicy, PolicyError, resolve_policy


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
