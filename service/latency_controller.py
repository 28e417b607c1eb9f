"""The latency controller: holds a p95 latency target under load by moving along the calibration curve.

Requests that leave the knob to the service (no threshold, mode or budget, or `mode=auto`) are served
at the controller's operating point. Point 0 is the default mode (`balanced`); the points after it are
the rows of the model's calibration table (validation accuracy and expected FLOPs at each uniform
threshold) that cost less, down to the accuracy floor and never below it. Requests with an explicit
knob are never changed.

Every `period_s` the controller compares the signal (the larger of the p95 of the latencies of the
requests finished in the last `window_s` and the expected queue delay) with the target, AIMD on the
expected FLOPs per image, as TCP does on its window (Chiu & Jain 1989; Proteus, ASPLOS 2024, scales
accuracy under load the same way):

- over the target: multiplicative decrease: the next point costs at most `DECREASE` times the current
  one's expected FLOPs (and at least one step cheaper);
- under `RECOVER_BELOW` of the target: additive increase: the next point may cost `INCREASE` of the
  full model's FLOPs more, up to point 0;
- in between: stay (hysteresis, so it does not oscillate around the target).
"""

from collections import deque
from dataclasses import dataclass

import numpy as np

from dynadapter.contract.model_repository import Manifest, ThresholdChoice
from dynadapter.service.settings import floor_accuracy

DECREASE = 0.85  # multiplicative decrease of the expected FLOPs per image, per period over the target
INCREASE = 0.02  # additive increase, as a fraction of the full model's FLOPs, per period well under it
RECOVER_BELOW = 0.7  # recover only when the signal is under this fraction of the target
MIN_STEP = 0.005  # consecutive points differ by at least this fraction of the full model's FLOPs


@dataclass(frozen=True)
class OperatingPoint:
    """One point of the curve: a uniform threshold (None: the default mode's own), its validation accuracy
    and its expected FLOPs as a fraction of the full model's."""

    threshold: float | None
    accuracy: float
    flops_fraction: float


def accuracy_floor(manifest: Manifest, floor: str) -> float:
    """The floor as a validation accuracy: a mode name (that mode's accuracy) or a number in (0, 1]."""
    value = floor_accuracy(floor)
    if value is not None:
        return value
    if floor not in manifest.modes:
        raise ValueError(f"accuracy_floor {floor!r}: not a mode of this model ({', '.join(manifest.modes)})")
    return manifest.modes[floor].accuracy


def operating_curve(manifest: Manifest, default: ThresholdChoice, floor: float) -> list[OperatingPoint]:
    """Point 0 = `default`; then the cheaper calibration rows with accuracy >= `floor`, most expensive first."""
    points = [OperatingPoint(None, default.accuracy, default.flops_fraction)]
    rows = sorted(manifest.calibration.table, key=lambda row: -float(row["threshold"]))  # type: ignore[arg-type]
    for row in rows:
        flops, accuracy = float(row["flops_fraction"]), float(row["accuracy"])  # type: ignore[arg-type]
        if accuracy >= floor and flops <= points[-1].flops_fraction - MIN_STEP:
            points.append(OperatingPoint(float(row["threshold"]), accuracy, flops))  # type: ignore[arg-type]
    return points


class LatencyController:
    """AIMD on the operating curve (module docstring). Not thread-safe: call it from the event loop."""

    def __init__(self, curve: list[OperatingPoint], target_s: float, period_s: float) -> None:
        self.curve = curve
        self.target_s = target_s
        self.period_s = period_s
        self.window_s = max(5 * period_s, 2.0)  # enough requests for a p95, recent enough to react
        self.index = 0
        self._latencies: deque[tuple[float, float]] = deque()  # (finished at, seconds)

    @property
    def point(self) -> OperatingPoint:
        return self.curve[self.index]

    @property
    def degraded(self) -> bool:
        return self.index > 0

    def observe(self, now: float, latency_s: float) -> None:
        """One request answered at `now` (monotonic seconds) after `latency_s`."""
        self._latencies.append((now, latency_s))

    def p95(self, now: float) -> float | None:
        """The p95 of the latencies of the requests finished in the window, in seconds; None: none finished."""
        while self._latencies and self._latencies[0][0] < now - self.window_s:
            self._latencies.popleft()
        if not self._latencies:
            return None
        return float(np.percentile([latency for _, latency in self._latencies], 95))

    def step(self, now: float, queue_delay_s: float) -> bool:
        """One control period; True when the signal exceeded the target (a violation)."""
        p95 = self.p95(now)
        signal = max(p95 or 0.0, queue_delay_s)
        current = self.point.flops_fraction
        if signal > self.target_s:
            cheaper = [k for k, p in enumerate(self.curve) if k > self.index and p.flops_fraction <= DECREASE * current]
            self.index = cheaper[0] if cheaper else min(self.index + 1, len(self.curve) - 1)
            return True
        if signal < RECOVER_BELOW * self.target_s and self.index > 0:
            dearer = [k for k, p in enumerate(self.curve) if k < self.index and p.flops_fraction <= current + INCREASE]
            self.index = dearer[0] if dearer else self.index - 1
        return False
