"""Exit policy: which thresholds an image is held to, and how a request's knob chooses them.

Where the exits are is the model's business (the manifest's segments); when an image may leave is
this small object's: one threshold per early exit (the last exit always answers).
"""

from dataclasses import dataclass

import numpy as np

from dynadapter.contract.model_repository import Manifest, ThresholdChoice

DEFAULT_MODE = "balanced"


class PolicyError(ValueError):
    """The request's knob cannot be honoured by this model's calibration."""


@dataclass(frozen=True)
class ExitPolicy:
    """An image leaves early exit k when its confidence is >= `thresholds[k]` (K-1 values)."""

    thresholds: tuple[float, ...]
    reported: float | tuple[float, ...]  # what the response shows: the scalar, or the per-exit vector

    @classmethod
    def uniform(cls, threshold: float, num_exits: int) -> "ExitPolicy":
        return cls((float(threshold),) * (num_exits - 1), float(threshold))

    @classmethod
    def per_exit(cls, thresholds: tuple[float, ...]) -> "ExitPolicy":
        """A per-exit vector, reported as one number when every exit has the same threshold."""
        return cls(thresholds, thresholds[0] if len(set(thresholds)) == 1 else thresholds)

    @classmethod
    def from_choice(cls, choice: ThresholdChoice, num_exits: int) -> "ExitPolicy":
        if choice.thresholds is not None:  # a calibrated per-exit vector wins over the scalar
            vector = tuple(float(t) for t in choice.thresholds)
            return cls(vector, vector)
        return cls.uniform(choice.threshold, num_exits)

    def as_array(self) -> np.ndarray:
        return np.asarray(self.thresholds, dtype=np.float64)


def resolve_policy(
    manifest: Manifest,
    threshold: float | None = None,
    mode: str | None = None,
    budget: float | None = None,
) -> ExitPolicy:
    """Turn at most one of `threshold` | `mode` | `budget` into a policy; none given: `balanced`."""
    if sum(knob is not None for knob in (threshold, mode, budget)) > 1:
        raise PolicyError("give at most one of threshold, mode and budget")
    num_exits = manifest.num_exits
    if threshold is not None:
        return ExitPolicy.uniform(threshold, num_exits)
    if budget is not None:
        return ExitPolicy.from_choice(_budget_choice(manifest, budget), num_exits)
    name = mode or DEFAULT_MODE
    if name not in manifest.modes:
        raise PolicyError(f"unknown mode {name!r}; this model has {', '.join(sorted(manifest.modes))}")
    return ExitPolicy.from_choice(manifest.modes[name], num_exits)


def _budget_choice(manifest: Manifest, budget: float) -> ThresholdChoice:
    """The entry with the largest budget not above the request (the smallest entry if none)."""
    entries = sorted(manifest.calibration.budgets, key=lambda entry: entry.budget)
    if not entries:
        raise PolicyError("this model has no FLOPs-budget calibration")
    affordable = [entry for entry in entries if entry.budget <= budget]
    return affordable[-1] if affordable else entries[0]
