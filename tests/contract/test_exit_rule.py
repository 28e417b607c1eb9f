import numpy as np

from dynadapter.contract import exit_indices


def test_exit_rule_first_confident_exit_last_always_answers() -> None:
    conf = np.array([[0.9, 0.2, 0.2], [0.95, 0.8, 0.1], [0.99, 0.2, 0.3], [0.5, 0.5, 0.5]])
    assert exit_indices(conf, 0.8).tolist() == [0, 1, 3]
    assert exit_indices(conf, 0.0).tolist() == [0, 0, 0]
    assert exit_indices(conf, 1.0).tolist() == [3, 3, 3]
    # a saturated confidence of exactly 1.0 still does not leave early at threshold 1
    assert exit_indices(np.ones((4, 2)), 1.0).tolist() == [3, 3]


def test_one_exit_always_answers() -> None:
    """A model with one exit (a frozen probe, a full-depth model) has no early exit to leave at."""
    confidences = np.array([[0.1, 0.9, 1.0]])
    for threshold in (0.0, 0.5, 1.0):
        assert exit_indices(confidences, threshold).tolist() == [0, 0, 0]
