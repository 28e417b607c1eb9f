"""Exit policy: which thresholds an image is held to, and how a request's knob chooses them.

Where the exits are is the model's business (the manifest's segments); when an image may leave is
this small object's: one threshold per early exit (the last exit always answers; the rule itself is
dynadapter.contract.exit_rule). `choose_policy` is the whole knob -> thresholds mapping: the request's
threshold, mode or budget, the latency controller's operating point when none is given, and live
calibration's thresholds when it is on.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dynadapter.contract.model_repository import Manifest, ThresholdChoice

DEFAULT_MODE = "balanced"

#: A mode's current live thresholds (LiveCalibrator.thresholds): mode name -> K-1 thresholds.
LiveThresholds = Callable[[str], tuple[float, ...]]


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


def choose_policy(
    manifest: Manifest,
    threshold: float | None = None,
    mode: str | None = None,
    budget: float | None = None,
    *,
    operating_threshold: float | None = None,
    live: LiveThresholds | None = None,
) -> ExitPolicy:
    """The thresholds a request's knob asks for (`PolicyError` if it cannot be honoured).

    No knob, or mode `auto`: the latency controller's operating point (`operating_threshold`, None where
    there is no controller or it is at the default mode), else the default mode. A named mode: its live
    thresholds where live calibration is on (`live`).
    """
    if mode == "auto":
        if threshold is not None or budget is not None:
            raise PolicyError("give at most one of threshold, mode and budget")
        mode = None
    if threshold is None and budget is None and mode is None:
        if operating_threshold is not None:
            return degraded_policy(manifest, operating_threshold, live)
        mode = DEFAULT_MODE
    policy = resolve_policy(manifest, threshold=threshold, mode=mode, budget=budget)
    if mode is not None and live is not None:
        return ExitPolicy.per_exit(live(mode))
    return policy


def degraded_policy(manifest: Manifest, threshold: float, live: LiveThresholds | None = None) -> ExitPolicy:
    """The latency controller's cheaper point; with live calibration, kept between the live `fast` and the
    live default mode per exit, so that load does not undo what drift made the modes raise."""
    if live is None or "fast" not in manifest.modes:
        return ExitPolicy.uniform(threshold, manifest.num_exits)
    fast, default = live("fast"), live(DEFAULT_MODE)
    return ExitPolicy.per_exit(tuple(min(top, max(threshold, low)) for low, top in zip(fast, default, strict=True)))


def _budget_choice(manifest: Manifest, budget: float) -> ThresholdChoice:
    """The entry with the largest budget not above the request (the smallest entry if none)."""
    entries = sorted(manifest.calibration.budgets, key=lambda entry: entry.budget)
    if not entries:
        raise PolicyError("this model has no FLOPs-budget calibration")
    affordable = [entry for entry in entries if entry.budget <= budget]
    return affordable[-1] if affordable else entries[0]
