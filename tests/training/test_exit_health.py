"""The rule by which train and eval warn of deep exits that lose to earlier ones (training/exit_health.py), on
hand-made answers: which exits are named, the noise boundary, and the exact words a user reads."""

import numpy as np
import pytest

from dynadapter.training.exit_health import ADVICE, health_record, losing_exits, warning_lines


def logits_of(*groups: tuple[int, tuple[bool, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Logits [K, N, 2] and targets [N] (all class 0) from (count, (exit 0 right?, exit 1 right?, ...)) groups:
    ``count`` images that each exit answers right or wrong as given."""
    right = np.concatenate([np.tile(np.array(answers)[:, None], (1, count)) for count, answers in groups], axis=1)
    logits = np.where(right[..., None], np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    return logits, np.zeros(right.shape[1], dtype=np.int64)


def two_exits(earlier_only: int, later_only: int) -> tuple[np.ndarray, np.ndarray]:
    """100 images: ``earlier_only`` only exit 0 gets right, ``later_only`` only exit 1, 5 neither, the rest both."""
    both = 100 - earlier_only - later_only - 5
    return logits_of(
        (both, (True, True)), (earlier_only, (True, False)), (later_only, (False, True)), (5, (False, False))
    )


def test_a_last_exit_that_loses_is_named_with_both_accuracies_and_what_it_means_for_the_modes() -> None:
    logits, targets = two_exits(25, 5)
    [finding] = losing_exits(logits, targets, [6, 12])
    assert (finding.earlier, finding.later, finding.earlier_only, finding.later_only) == (0, 1, 25, 5)
    assert finding.message("val") == (
        "exit 1 (after block 12) answers 70.0% of the 100 val images, worse than exit 0 (after block 6) at 90.0%: "
        "exit 0 alone is right on 25 of them and exit 1 alone on 5, more than the noise "
        "(25 - 5 = 20 > 2 * sqrt(30) = 11.0, McNemar's test); threshold 1 (full depth, the dearest setting) "
        "answers worse than threshold 0 (exit 0 alone, the cheapest setting), and `accurate` can cost more than "
        "`fast` for fewer right answers"
    )


def test_a_gap_within_the_noise_is_not_reported_and_one_image_more_is() -> None:
    # 12 - 4 = 8 = 2 * sqrt(16): exit 1 is 8 points behind on 100 images, and that is still the split's noise
    assert losing_exits(*two_exits(12, 4), [6, 12]) == []
    [finding] = losing_exits(*two_exits(13, 4), [6, 12])  # 9 > 2 * sqrt(17) = 8.2
    assert (finding.earlier_accuracy, finding.later_accuracy) == (0.91, 0.82)


def test_a_later_exit_that_gains_or_ties_is_not_reported() -> None:
    assert losing_exits(*two_exits(4, 25), [6, 12]) == []
    assert losing_exits(*two_exits(10, 10), [6, 12]) == []


def test_each_losing_exit_is_named_once_against_the_most_accurate_earlier_exit_it_loses_to() -> None:
    logits, targets = logits_of(
        (50, (True, True, True)),
        (5, (True, False, False)),
        (15, (False, True, False)),
        (20, (True, True, False)),
        (10, (False, False, False)),
    )
    # exit 2 (50%) loses beyond the noise to exit 0 (75%) and to exit 1 (85%): the more accurate is named
    [finding] = losing_exits(logits, targets, [3, 6, 9])
    assert (finding.earlier, finding.later, finding.earlier_block, finding.later_block) == (1, 2, 6, 9)
    assert (finding.earlier_accuracy, finding.later_accuracy, finding.earlier_only, finding.later_only) == (
        0.85,
        0.5,
        35,
        0,
    )


def test_a_middle_exit_that_loses_says_what_sending_images_on_costs() -> None:
    logits, targets = logits_of((60, (True, True, True)), (20, (True, False, True)), (20, (False, False, False)))
    [finding] = losing_exits(logits, targets, [4, 8, 12])
    assert (finding.earlier, finding.later, finding.last) == (0, 1, False)
    assert finding.message("test").endswith(
        "McNemar's test); images sent on from exit 0 to exit 1 cost more there and are answered worse"
    )


def test_a_last_exit_losing_to_a_middle_exit_names_stopping_there() -> None:
    logits, targets = logits_of((50, (True, True, False)), (50, (False, True, True)))
    [finding] = losing_exits(logits, targets, [4, 8, 12])
    assert (finding.earlier, finding.later) == (1, 2)
    assert "threshold 1 (full depth, the dearest setting) answers worse than stopping every image at exit 1" in (
        finding.message("test")
    )


def test_the_record_carries_the_rule_the_findings_and_their_messages() -> None:
    logits, targets = two_exits(25, 5)
    findings = losing_exits(logits, targets, [6, 12])
    record = health_record(findings, "test", 100)
    assert {k: v for k, v in record.items() if k != "losing_exits"} == {
        "rule": "mcnemar",
        "z": 2.0,
        "split": "test",
        "num_samples": 100,
    }
    [entry] = record["losing_exits"]
    assert entry["earlier_block"] == 6 and entry["later_block"] == 12 and entry["last"] is True
    assert entry["message"] == findings[0].message("test")
    assert warning_lines(record) == [findings[0].message("test"), ADVICE]
    assert warning_lines(health_record([], "test", 100)) == []


def test_block_numbers_must_name_every_exit_and_an_empty_split_has_no_findings() -> None:
    logits, targets = two_exits(25, 5)
    with pytest.raises(ValueError, match="1 block numbers for 2 exits"):
        losing_exits(logits, targets, [12])
    assert losing_exits(np.zeros((2, 0, 3)), np.zeros(0, dtype=np.int64), [6, 12]) == []
