"""Numerics both sides of the model repository must compute identically: the exit confidence that
calibration sweeps offline and the segment runner compares online, and the segment checksum."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 so that thresholds near 1 compare exactly.

    Args:
        logits: [..., C] any float dtype. Returns float64 of the same shape.
    """
    shifted = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability over the last axis: how sure an exit is. [..., C] -> [...]."""
    return softmax(logits).max(axis=-1)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (segments can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
