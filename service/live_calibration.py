"""Live calibration: the named modes' thresholds kept honest on production traffic, without labels.

The thresholds of `fast`, `balanced` and `accurate` were chosen once, on the validation split. When the
inputs drift (blur, noise, another camera), the early exits' confidences stop meaning what they meant
there. Following Apparate (SOSP 2024), a fraction of the images is *shadowed*: answered as usual, then
run on, when there is spare capacity, through the remaining segments with every exit head on. The last
exit's answer stands in for the label: for every exit k the service collects (confidence at k, whether
exit k's answer agrees with the last exit's) in a sliding window.

Every `every` shadowed images, each mode's threshold at each early exit is chosen anew from the window,
against the mode's target, min(1 - epsilon, the agreement the mode had on the validation split),
with Wilson confidence bounds (one-sided 95%) over the images with confidence >= t:

- **violation**: at the live threshold (at least `MIN_SAMPLES` images above it) even the upper bound
  of the agreement is below the target: raised at once to the smallest *certified* threshold above it
  (lower bound >= target, at least `MIN_SAMPLES` images), or, with none, to 1 (the exit closes until
  the evidence certifies one again);
- **sustained evidence**: a certified threshold below the live one proposed `PATIENCE` re-choices in a
  row: lowered to the highest of those proposals;
- otherwise (too few images, or an agreement the bounds cannot place) nothing moves: a fresh server
  keeps the validation thresholds until the traffic says otherwise.

An image already in the window is not counted again (`image_digest`): the bounds assume independent
images.
"""

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dynadapter.contract.model_repository import Manifest, ThresholdChoice
from dynadapter.service.segment_runner import ShadowTrace

GRID = np.round(np.linspace(0.0, 1.0, 201), 3)  # the calibration table's own step
MIN_SAMPLES = 30  # fewer images above a threshold certify nothing
PATIENCE = 3  # consecutive re-choices that must propose a lower threshold before it is lowered
Z = 1.645  # one-sided 95% normal quantile for the Wilson bound


def wilson_bounds(successes: np.ndarray, trials: np.ndarray, z: float = Z) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (Wilson 1927), elementwise: (lower, upper); (0, 1)
    where trials = 0."""
    n = np.maximum(trials, 1)
    p = successes / n
    centre = p + z * z / (2 * n)
    margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    empty = trials == 0
    return np.where(empty, 0.0, (centre - margin) / scale), np.where(empty, 1.0, (centre + margin) / scale)


@dataclass
class _ModeState:
    calibrated: tuple[float, ...]  # per early exit, from the manifest
    target: float  # agreement to hold at every early exit
    live: list[float]
    proposals: list[list[float]] = field(default_factory=list)  # per exit: the recent lower proposals


class LiveCalibrator:
    """Collects shadow traces, keeps per-exit agreement, re-chooses the modes' thresholds (module docstring)."""

    def __init__(
        self, manifest: Manifest, fraction: float, epsilon: float, every: int, window: int, seed: int = 0
    ) -> None:
        self.fraction = fraction
        self.epsilon = epsilon
        self.every = every
        self.num_exits = manifest.num_exits
        self._rng = np.random.default_rng(seed)
        # per early exit: (confidence there, agrees with the last exit), over the shadowed images
        self._samples = [deque[tuple[float, bool]](maxlen=window) for _ in range(self.num_exits - 1)]
        # per early exit: agreement of the images answered there (what a client actually got)
        self._answered = [deque[bool](maxlen=window) for _ in range(self.num_exits - 1)]
        self._seen = 0
        self._digests: deque[bytes] = deque(maxlen=window)  # the window's images, so a repeat is not counted
        self._recent: set[bytes] = set()
        self.modes = {name: self._mode_state(manifest, choice) for name, choice in manifest.modes.items()}

    def _mode_state(self, manifest: Manifest, choice: ThresholdChoice) -> _ModeState:
        early = self.num_exits - 1
        calibrated = tuple(choice.thresholds) if choice.thresholds is not None else (choice.threshold,) * early
        target = min(1 - self.epsilon, _calibrated_agreement(manifest, choice))
        return _ModeState(calibrated, target, list(calibrated), [[] for _ in range(early)])

    def sample(self, batch: int) -> np.ndarray:
        """Which images of a batch to shadow: each with probability `fraction`. [batch] bool."""
        return self._rng.random(batch) < self.fraction

    def observe(self, trace: ShadowTrace) -> bool:
        """One shadowed image; True when this sample triggered a re-choice of the thresholds.

        An image already in the window (the same input tensor: a retry, a health probe, a cached
        duplicate) is ignored: the bound assumes independent images, and one image sent a thousand
        times would otherwise certify any threshold."""
        if trace.image_digest:
            if trace.image_digest in self._recent:
                return False
            if len(self._digests) == self._digests.maxlen:
                self._recent.discard(self._digests[0])
            self._digests.append(trace.image_digest)
            self._recent.add(trace.image_digest)
        final = trace.predictions[-1]
        for k in range(self.num_exits - 1):
            if not math.isnan(trace.confidences[k]):
                self._samples[k].append((trace.confidences[k], trace.predictions[k] == final))
        if trace.answered_exit < self.num_exits - 1:
            self._answered[trace.answered_exit].append(trace.predictions[trace.answered_exit] == final)
        self._seen += 1
        if self._seen % self.every:
            return False
        self.rechoose()
        return True

    def agreement(self, exit_index: int) -> float | None:
        """Agreement with the last exit of the shadowed images answered at `exit_index`, over the window."""
        answered = self._answered[exit_index]
        return sum(answered) / len(answered) if answered else None

    def thresholds(self, mode: str) -> tuple[float, ...]:
        return tuple(self.modes[mode].live)

    def rechoose(self) -> None:
        for k, samples in enumerate(self._samples):
            if not samples:
                continue
            confidences = np.array([c for c, _ in samples])
            agrees = np.array([a for _, a in samples], dtype=bool)
            evidence = _Evidence.of(confidences, agrees)
            for state in self.modes.values():
                state.live[k] = _next_threshold(state, k, evidence)


@dataclass(frozen=True)
class _Evidence:
    """Per grid threshold t, over the window's samples with confidence >= t: how many, and the Wilson
    interval of their agreement."""

    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def of(cls, confidences: np.ndarray, agrees: np.ndarray) -> "_Evidence":
        above = confidences[None, :] >= GRID[:, None]  # [grid, samples]
        counts = above.sum(axis=1)
        lower, upper = wilson_bounds((above & agrees[None, :]).sum(axis=1), counts)
        return cls(counts, lower, upper)


def _next_threshold(state: _ModeState, k: int, evidence: _Evidence) -> float:
    """The mode's next threshold at exit k (module docstring): raised at once on clear evidence of a
    violation, lowered only on sustained evidence that a lower one is safe, else kept."""
    current = state.live[k]
    certified = (evidence.lower >= state.target) & (evidence.counts >= MIN_SAMPLES)
    proposals = state.proposals[k]
    at = min(int(np.searchsorted(GRID, current - 1e-9)), len(GRID) - 1)
    if evidence.counts[at] >= MIN_SAMPLES and evidence.upper[at] < state.target:  # violated: raise at once
        proposals.clear()
        above = np.flatnonzero(certified & (GRID > current))
        return float(GRID[above[0]]) if above.size else 1.0  # nothing certified above: the exit closes
    lower = np.flatnonzero(certified & (GRID < current))
    if lower.size == 0:
        proposals.clear()
        return current
    proposals.append(float(GRID[lower[0]]))
    if len(proposals) < PATIENCE:
        return current
    lowered = max(proposals)  # sustained evidence: lower, to the most cautious proposal
    proposals.clear()
    return lowered


def _calibrated_agreement(manifest: Manifest, choice: ThresholdChoice) -> float:
    """Agreement with the last exit the mode had on the validation split (1 - the table's disagreement at
    its threshold); 1 where the table does not say (a per-exit vector mode)."""
    if choice.thresholds is not None:
        return 1.0
    for row in manifest.calibration.table:
        if abs(float(row["threshold"]) - choice.threshold) < 1e-9 and "disagreement" in row:  # type: ignore[arg-type]
            return 1.0 - float(row["disagreement"])  # type: ignore[arg-type]
    return 1.0
