"""Deadlines: a running estimate of each segment's time, so that an image can leave with the exit it has.

An image whose deadline would pass before the next segment finishes leaves at the exit it is at
(reason `deadline`) instead of running on and missing it: an anytime answer. The estimate is
per segment and batch size, because a segment's time grows with the rows it runs on; it starts
from the warm-up runs and follows the served traffic (exponentially weighted).
"""

import threading
from typing import Literal

ExitReason = Literal["confident", "deadline", "last"]
NO_DEADLINE = float("inf")


class DeadlineError(Exception):
    """Not even the first segment can finish before the deadline: the request gets 504."""


class SegmentTimes:
    """Exponentially weighted mean wall time of each segment per batch size, in seconds."""

    def __init__(self, num_segments: int, smoothing: float = 0.2) -> None:
        self._smoothing = smoothing
        self._seconds: list[dict[int, float]] = [{} for _ in range(num_segments)]
        self._lock = threading.Lock()  # written by the inference thread, read on the event loop too

    def record(self, segment: int, rows: int, seconds: float) -> None:
        with self._lock:
            known = self._seconds[segment].get(rows)
            weight = self._smoothing
            self._seconds[segment][rows] = seconds if known is None else (1 - weight) * known + weight * seconds

    def estimate(self, segment: int, rows: int) -> float:
        """Seconds segment `segment` is expected to take on `rows` images; 0 before any measurement.

        A batch size never measured is estimated from the nearest one measured: scaled up linearly
        from a smaller batch (pessimistic: batching makes rows cheaper), taken as is from a larger one.
        """
        if segment >= len(self._seconds) or rows <= 0:
            return 0.0
        with self._lock:
            measured = dict(self._seconds[segment])
        if not measured:
            return 0.0
        if rows in measured:
            return measured[rows]
        nearest = min(measured, key=lambda size: (abs(size - rows), size))
        return measured[nearest] * rows / nearest if nearest < rows else measured[nearest]

    def slowest(self, rows: int) -> float:
        """The largest estimate of any one segment on `rows` images, in seconds."""
        return max((self.estimate(segment, rows) for segment in range(len(self._seconds))), default=0.0)
