"""The early-exit cascade: chains a model's per-stage segments and lets images leave early.

After each segment the images that the exit rule (dynadapter.contract.exit_rule: confidence = max
softmax of that exit's logits reaches the image's own threshold) lets go leave with that exit's
logits; only the others (`hidden[~exited]`) go on to the next segment, and the last exit answers for
whoever is left. A segment exported with a gated exit head skips its head when no image in flight can
leave there (every threshold >= 1): a request at threshold 1 pays for no early head.

The segments run on a backend (service/backends/base.py: onnxruntime or OpenVINO, one module per
runtime); exit compaction, the head gate's rule, deadlines and live calibration's shadow traces are
this module's, the same for every backend.
"""

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from dynadapter.contract import confidence, leaves, may_leave
from dynadapter.contract.model_repository import ModelLoadError
from dynadapter.service.backends.base import BackendName, SegmentBackend
from dynadapter.service.backends.onnxruntime import CPU, OnnxRuntimeBackend
from dynadapter.service.backends.openvino import OpenVinoBackend
from dynadapter.service.deadlines import NO_DEADLINE, ExitReason, SegmentTimes


@dataclass(frozen=True)
class ExitResult:
    """Where one image left, why, and what that exit said."""

    exit_index: int
    logits: np.ndarray  # [num_classes], raw
    skipped_heads: tuple[int, ...] = ()  # earlier exits whose (gated) head did not run for this image
    reason: ExitReason = "confident"  # confident enough | its deadline came | the last exit


@dataclass(frozen=True)
class ShadowTrace:
    """An image that went on past its answer to the last exit (live calibration): what every exit said."""

    answered_exit: int  # the exit whose answer was sent
    confidences: tuple[float, ...]  # max softmax at each exit, first to last
    predictions: tuple[int, ...]  # argmax at each exit, first to last
    image_digest: bytes = b""  # BLAKE2b of the input tensor: the same image sent again is no new evidence


@dataclass(frozen=True)
class StageOutput:
    """What one segment did for a batch: how many images it ran on, how long, and who left there."""

    stage: int
    rows: int  # images still in flight when this segment ran (shadowed ones included)
    seconds: float  # wall time of the segment
    exits: dict[int, ExitResult]  # input position in the batch -> result, for the images that left here
    shadows: dict[int, ShadowTrace] = field(default_factory=dict)  # at the last stage: the shadowed images


@dataclass(frozen=True)
class RunOutput:
    results: list[ExitResult]  # one per image, in input order
    stage_seconds: list[float]  # wall time of each segment that ran on this batch, stage 0 first


class SegmentRunner:
    """A model's segments, opened on one backend (`backend`), run as an early-exit cascade.

    Opened when a model version loads and kept until it is unloaded. `cascade`, `run` and `warm_up` are
    called from one thread at a time (the micro-batcher's inference thread); `times` learns each
    segment's time per batch size as they run, for deadlines.
    """

    def __init__(
        self,
        segment_paths: Sequence[Path],
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 0,
        num_classes: int | None = None,
        io_binding: bool | None = None,
        backend: BackendName = "onnxruntime",
        allow_spinning: bool = False,
    ) -> None:
        """`backend`: onnxruntime (ONNX segments, on `providers`) or openvino (OpenVINO IR segments, CPU).
        `io_binding`: keep hidden states in OrtValues between segments; default: on CUDA only.
        `intra_op_threads`: threads per segment run, 0 = the cores this process may use. `ModelLoadError` when a
        segment cannot be opened or disagrees with the manifest (`num_classes`). `allow_spinning`:
        onnxruntime's idle threads spin (onnxruntime's default, off here: faster on shared or small machines)."""
        # Public, so that a test can wrap it (a slow or watched model): the cascade reaches segments only here.
        self.backend: SegmentBackend = open_backend(
            backend, segment_paths, providers, intra_op_threads, num_classes, io_binding, allow_spinning
        )
        self.times = SegmentTimes(len(segment_paths))  # for deadlines: each segment's time per batch size

    @property
    def providers(self) -> list[str]:
        return self.backend.providers

    @property
    def device(self) -> str:
        """Where the segments run: "cuda" or "cpu"."""
        return self.backend.device

    @property
    def num_exits(self) -> int:
        return self.backend.num_segments

    def cascade(
        self,
        images: np.ndarray,
        thresholds: np.ndarray,
        deadlines: np.ndarray | None = None,
        shadow: np.ndarray | None = None,
        cancelled: np.ndarray | None = None,
    ) -> Iterator[StageOutput]:
        """Run a batch stage by stage; each image leaves at its first exit whose confidence reaches its threshold.

        Yields once per segment that ran, with the images that left at its exit, so that a caller can
        answer them while the others go on. images: float32 [B, 3, H, W]. thresholds: [B, K-1], or [B]
        for one threshold at every exit. A threshold >= 1 never lets an image leave early (float32
        softmax can round to 1).

        deadlines: [B] `time.perf_counter()` seconds (inf: none). After each early exit, an image whose
        next segment is not expected to finish before its deadline (`times`) leaves there, reason
        `deadline`. shadow: [B] bool; a shadowed image, once answered, runs on to the last exit with
        every head on, and the last stage's output carries what each exit said for it (live calibration).
        cancelled: [B] bool that another thread may set while the cascade runs (a request whose client
        went away); it is read after each segment, and a cancelled image runs no further segment.
        """
        batch = len(images)
        per_exit = self._per_exit(np.asarray(thresholds, dtype=np.float64), batch)
        deadlines = np.full(batch, NO_DEADLINE) if deadlines is None else np.asarray(deadlines, dtype=np.float64)
        shadow = np.zeros(batch, dtype=bool) if shadow is None else np.asarray(shadow, dtype=bool)
        trace = _Trace(images, self.num_exits) if shadow.any() else None
        alive = np.arange(batch)  # input positions of the images still running
        answered = np.zeros(batch, dtype=bool)  # shadowed images already answered, running on
        skipped: tuple[int, ...] = ()  # exits whose gated head did not run (the same for every image alive)
        x: Any = np.ascontiguousarray(images, dtype=np.float32)  # then the hidden state, where the backend keeps it
        for k in range(self.num_exits):
            last = k == self.num_exits - 1
            pending = ~answered[alive]
            eligible = pending & self._may_leave(k, per_exit[alive])
            rushed = pending & self._late(k, deadlines[alive], perf_counter() + self.times.estimate(k, len(alive)))
            need_logits = bool(eligible.any() or rushed.any() or trace is not None)
            start = perf_counter()
            hidden, logits = self.backend.run(k, x, need_logits)
            seconds = perf_counter() - start
            self.times.record(k, len(alive), seconds)
            reasons = np.full(len(alive), None, dtype=object)  # why each image leaves here, None: it goes on
            confidences = confidence(logits) if need_logits else None
            if confidences is None:
                skipped += (k,) if self.backend.gated(k) else ()
            elif last:
                reasons[pending] = "last"
            else:
                confident = pending & leaves(confidences, per_exit[alive, k])
                reasons[pending & self._late(k, deadlines[alive], perf_counter())] = "deadline"
                reasons[confident] = "confident"
            leaving = np.array([reason is not None for reason in reasons], dtype=bool)
            exits = {
                int(alive[row]): ExitResult(k, logits[row].copy(), skipped, reasons[row])
                for row in np.flatnonzero(leaving)
            }
            shadows: dict[int, ShadowTrace] = {}
            if trace is not None and confidences is not None:  # a shadowed batch runs every head
                trace.record(k, alive, confidences, logits, alive[leaving])
                shadows = trace.finish(np.flatnonzero(shadow)) if last else {}
            yield StageOutput(k, len(alive), seconds, exits, shadows)
            answered[alive[leaving]] = True
            # Fancy indexing copies: one snapshot of the flags for this step.
            gone = cancelled[alive] if cancelled is not None else np.zeros(len(alive), dtype=bool)
            staying = np.flatnonzero((~answered[alive] | shadow[alive]) & ~gone)
            if last or staying.size == 0:
                return
            alive = alive[staying]
            assert hidden is not None  # only the last segment has none
            x = hidden if staying.size == len(leaving) else self.backend.keep(hidden, staying)

    def _late(self, k: int, deadlines: np.ndarray, ready_at: float) -> np.ndarray:
        """Which images would miss their deadline if, ready at `ready_at`, they ran the segment after exit k."""
        if k == self.num_exits - 1 or np.isinf(deadlines).all():
            return np.zeros(len(deadlines), dtype=bool)
        return deadlines < ready_at + self.times.estimate(k + 1, len(deadlines))

    def run(self, images: np.ndarray, thresholds: np.ndarray) -> RunOutput:
        """The whole cascade at once: every image's result, in input order."""
        results: dict[int, ExitResult] = {}
        stage_seconds = []
        for stage in self.cascade(images, thresholds):
            results.update(stage.exits)
            stage_seconds.append(stage.seconds)
        return RunOutput([results[position] for position in range(len(images))], stage_seconds)

    def warm_up(self, image_size: tuple[int, int], batch_sizes: Iterable[int]) -> None:
        """Run every segment, and the row compaction, once per batch size before serving.

        The first run of a shape pays for memory arenas and (on CUDA) kernel selection; a request
        should not. Two runs: every head on (one image leaves at once, the rest go on), and every
        early head skipped (threshold 1).
        """
        for batch in sorted(set(batch_sizes)):
            images = np.zeros((batch, 3, *image_size), np.float32)
            thresholds = np.full((batch, self.num_exits - 1), np.nextafter(1.0, 0.0))
            if batch > 1:
                thresholds[0] = 0.0
            for output in (self.run(images, thresholds), self.run(images, np.ones((batch, self.num_exits - 1)))):
                _require_finite(output)

    def _per_exit(self, thresholds: np.ndarray, batch: int) -> np.ndarray:
        if thresholds.ndim == 1:
            thresholds = np.repeat(thresholds[:, None], self.num_exits - 1, axis=1)
        if thresholds.shape != (batch, self.num_exits - 1):
            raise ValueError(f"thresholds must be [{batch}, {self.num_exits - 1}], got {thresholds.shape}")
        return thresholds

    def _may_leave(self, k: int, thresholds: np.ndarray) -> np.ndarray:
        """Which images may leave at exit k: all at the last; elsewhere as the exit rule says (threshold < 1)."""
        if k == self.num_exits - 1:
            return np.ones(len(thresholds), dtype=bool)
        return may_leave(thresholds[:, k])


class _Trace:
    """What every exit said for each image of a batch; kept only when some of its images are shadowed."""

    def __init__(self, images: np.ndarray, num_exits: int) -> None:
        batch = len(images)
        self.images = images
        self.confidences = np.full((batch, num_exits), np.nan)
        self.predictions = np.full((batch, num_exits), -1, dtype=np.int64)
        self.answered_exit = np.full(batch, -1, dtype=np.int64)

    def record(
        self, k: int, alive: np.ndarray, confidences: np.ndarray, logits: np.ndarray, answered_now: np.ndarray
    ) -> None:
        self.confidences[alive, k] = confidences
        self.predictions[alive, k] = logits.argmax(axis=1)
        self.answered_exit[answered_now] = k

    def finish(self, positions: np.ndarray) -> dict[int, ShadowTrace]:
        return {
            int(p): ShadowTrace(
                int(self.answered_exit[p]),
                tuple(float(c) for c in self.confidences[p]),
                tuple(int(c) for c in self.predictions[p]),
                hashlib.blake2b(np.ascontiguousarray(self.images[p]).tobytes(), digest_size=16).digest(),
            )
            for p in positions
        }


def _require_finite(output: RunOutput) -> None:
    """ModelLoadError when a warm-up run gave non-finite logits: such a model would answer NaN."""
    for result in output.results:
        if not np.isfinite(result.logits).all():
            raise ModelLoadError(
                f"exit {result.exit_index} gives non-finite logits on the warm-up images: "
                "the model is broken (re-export it from a good checkpoint)"
            )


def open_backend(
    name: BackendName,
    segment_paths: Sequence[Path],
    providers: Sequence[str] = (CPU,),
    intra_op_threads: int = 0,
    num_classes: int | None = None,
    io_binding: bool | None = None,
    allow_spinning: bool = False,
) -> SegmentBackend:
    """Open a model's segments on the named backend (`SegmentRunner`'s arguments); `ModelLoadError`."""
    if name == "openvino":
        return OpenVinoBackend(segment_paths, intra_op_threads, num_classes)
    return OnnxRuntimeBackend(segment_paths, providers, intra_op_threads, num_classes, io_binding, allow_spinning)
