"""Small models of the serving experiments' sections of docs/results.json that are not the lab's shared rows
(``bench.lab.rows``): ``adapt`` (written by ``serving.adapt_report``, partly through these models, its keys and order as
they were), read once where the page is rendered (``AdaptSection.model_validate(section)``) so that the
renderer uses attributes, not string keys. Keys a model does not name are ignored."""

from __future__ import annotations

from dynadapter.bench.lab.rows import Row


class StepStats(Row):
    """What ``adapt_report.stats`` measures over a stretch of requests, in the order results.json writes it:
    requests sent and failed, p95 latency (ms), accuracy, the mean threshold answered at, the answers per exit
    reason and, where a yardstick was given, agreement with the last exit and the floor mode's accuracy on the
    same photos (fractions in [0, 1]); None where no request was answered. Dump it with ``exclude_unset``: a
    yardstick not given is no key."""

    requests: int
    errors: int
    p95_ms: float | None
    accuracy: float | None
    threshold: float | None
    exit_reasons: dict[str, int]
    agreement: float | None = None
    floor_accuracy: float | None = None

    @property
    def answered(self) -> int:
        return self.requests - self.errors


class RampStep(Row):
    """What the ramp verdict (``adapt_report.ramp_verdict``) reads of a step: its clients, failed requests, p95
    latency (ms; None: nothing answered), accuracy and the floor mode's accuracy (fractions; None: unknown)."""

    clients: int
    errors: int
    p95_ms: float | None
    accuracy: float | None
    floor_accuracy: float | None = None

    def over(self, target_ms: float) -> bool:
        """The step's p95 exceeds the target, or some request got no answer (no latency kept)."""
        return self.p95_ms is None or self.p95_ms > target_ms or self.errors > 0

    def margin(self) -> float:
        """Accuracy minus floor, rounded to 9 digits (both are fractions of the same images); -1 where either is
        unknown."""
        if self.accuracy is None or self.floor_accuracy is None:
            return -1.0
        return round(self.accuracy - self.floor_accuracy, 9)


class AdaptStep(StepStats):
    """One load step (or drift phase) of ``bench adapt`` as the page reads it: its ``StepStats``, with the
    ``clients`` sending back to back and the answered requests per second, where recorded (``floor_accuracy``: on
    a ramp step only)."""

    clients: int | None = None
    throughput_rps: float | None = None


class RampVerdict(Row):
    """Issue #17's ramp target judged: where fixed balanced first exceeds the p95 target (None: never), the
    clients the controller must and does hold, its worst p95 (ms, and over the target) and accuracy margin."""

    balanced_exceeds_at: int | None
    controller_holds_up_to: int | None
    required_clients: int | None = None
    worst_p95_ms: float | None = None
    worst_p95_over_target: float | None = None
    failed_requests: int = 0
    lowest_accuracy_margin: float | None = None
    met: bool
    why: str | None  # None where met


class Ramp(Row):
    """The load ramp: the p95 target (ms) and where it came from, the probe step, the floor mode, each
    configuration's steps by name and the verdict."""

    target_p95_ms: float
    target_source: str
    probe: AdaptStep
    accuracy_floor: str
    steps: dict[str, list[AdaptStep]]
    verdict: RampVerdict


class DriftVerdict(Row):
    """Issue #17's drift target: agreement (0..1) of the live and fixed servers against the ``bound``; ``live_ok``:
    live at or above it, ``fixed_below``: fixed below it."""

    bound: float
    live: float | None
    fixed: float | None
    live_ok: bool
    fixed_below: bool
    met: bool


class Drift(Row):
    """The input drift run: phases (seconds: clean, drifted), each server's two phases, the agreement by
    corruption over the judged ``judge_fraction`` of the drifted phase, the drifted images shadowed before it."""

    epsilon: float
    phases_s: list[float]
    judge_fraction: float
    phases: dict[str, list[AdaptStep]]
    judged_agreement_by_corruption: dict[str, dict[str, float | None]]
    shadowed_before_judged: float | None
    verdict: DriftVerdict


class LastExitAccuracy(Row):
    """The last exit's accuracy (0..1) on the clean and the corrupted photos."""

    clean: float | None
    drifted: float | None


class AdaptImages(Row):
    """The photos sent: ``count`` test images of ``data`` as ``photo_size`` (width, height) JPEGs, corrupted
    in the drift phase by kind at ``severity``."""

    data: str
    count: int
    photo_size: tuple[int, int]
    corruptions: dict[str, float]
    severity: int
    last_exit_accuracy: LastExitAccuracy


class LoadAverage(Row):
    """The 1-minute load average at the start and the end of a run."""

    start: float
    end: float


class AdaptMachine(Row):
    """The machine as the page names it (``lab.machine``)."""

    cpu_count: int
    processor: str
    providers: str
    load_average_1m: LoadAverage


class AdaptModel(Row):
    """The model served: its name, exits and GFLOPs per image at full depth."""

    name: str
    exits: int
    gflops_full: float


class AdaptSettings(Row):
    """The flags of the run the page cites (batching, threads, client counts, step and phase seconds, live
    calibration's shadow share, period and window)."""

    max_batch_size: int
    max_wait_ms: float
    threads: int
    clients: list[int]
    step_s: float
    drift_clients: int
    live_calibration: float
    calibration_every: int
    calibration_window: int


class AdaptFigures(Row):
    """The figures' paths relative to docs/."""

    ramp: str
    drift: str


class AdaptSection(Row):
    """results.json's ``adapt``."""

    created_utc: str
    machine: AdaptMachine
    images: AdaptImages
    model: AdaptModel
    settings: AdaptSettings
    ramp: Ramp
    drift: Drift
    figures: AdaptFigures
