"""The frozen probe's logistic-regression heads (training/linear_probe.py): the weights folded into a
linear layer answer exactly as scikit-learn's fitted model does."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from dynadapter.training.linear_probe import C_GRID, fit_head


def _blobs(classes: list[int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([classes[i % len(classes)] for i in range(n)])
    centres = np.random.default_rng(99).normal(0, 1.5, (10, 6))
    return (centres[y] + rng.normal(0, 1, (n, 6)) * 3 + 50).astype(np.float32), y


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.mark.parametrize("classes", [[0, 1, 2, 3], [0, 1]])
def test_the_folded_head_is_the_fitted_regression(classes: list[int]) -> None:
    x, y = _blobs(classes, 200, 0)
    val_x, val_y = _blobs(classes, 100, 1)
    weight, bias, choice = fit_head(x, y, val_x, val_y, len(classes))
    # The choice: the C with the best validation accuracy, refitted here independently.
    scaler = StandardScaler().fit(x)
    accs = {}
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x), y)
        accs[c] = float((clf.predict(scaler.transform(val_x)) == val_y).mean())
    assert choice["val_acc"] == max(accs.values()) and choice["C"] == min(
        c for c in C_GRID if accs[c] == max(accs.values())
    )
    clf = LogisticRegression(C=choice["C"], max_iter=1000).fit(scaler.transform(x), y)
    # Raw features through the linear layer = sklearn's probabilities on standardised features.
    probs = _softmax(val_x.astype(np.float64) @ weight.T + bias)
    np.testing.assert_allclose(probs, clf.predict_proba(scaler.transform(val_x)), atol=1e-4)
    assert weight.dtype == np.float32 and weight.shape == (len(classes), 6) and bias.shape == (len(classes),)


def test_a_class_absent_from_training_is_never_predicted() -> None:
    x, y = _blobs([0, 2, 3], 150, 0)
    val_x, val_y = _blobs([0, 2, 3], 60, 1)
    weight, bias, _ = fit_head(x, y, val_x, val_y, 4)
    assert not weight[1].any()
    logits = val_x @ weight.T + bias
    assert (logits.argmax(axis=1) != 1).all() and (logits[:, 1] < logits[:, [0, 2, 3]].min(axis=1)).all()
