"""The exit rule, stated once for calibration (offline, training/calibration.py) and the cascade
(online, service/segment_runner.py): an image leaves at the first exit whose confidence (max softmax,
`numerics.confidence`) reaches its threshold; a threshold >= 1 never lets it leave early (float32
softmax can round to 1); the last exit answers for whoever is left.
"""

from __future__ import annotations

import numpy as np


def may_leave(thresholds: np.ndarray | float) -> np.ndarray:
    """Which thresholds let an image leave at all: those below 1. Any shape -> bool of that shape."""
    return np.asarray(thresholds) < 1.0


def leaves(confidences: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Which images leave at an early exit: confidence reaches a threshold below 1.

    confidences [...] and thresholds (broadcastable to them) -> bool [...].
    """
    return may_leave(thresholds) & (confidences >= thresholds)


def exit_indices(confidences: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """The exit each image takes: confidences [K, N] (exit k's for image n) and thresholds of the K-1
    early exits (a scalar, [K-1, 1] or [K-1, N]) -> int [N] in [0, K-1]. One exit (K = 1) always answers."""
    k = confidences.shape[0]
    if k == 1:  # no early exit (argmax over none would raise)
        return np.zeros(confidences.shape[1], dtype=np.intp)
    early = leaves(confidences[:-1], thresholds)
    return np.where(early.any(axis=0), early.argmax(axis=0), k - 1)
