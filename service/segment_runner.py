"""Chains the per-stage segments of a model and lets images leave early, on onnxruntime or OpenVINO.

After each segment the images whose confidence (max softmax of that exit's logits) reaches their
own threshold leave with that exit's logits; only the others (`hidden[~exited]`) go on to the next
segment, and the last exit answers for whoever is left. A segment exported with a gated exit head
(input `need_logits`, export/head_gate.py) skips its head when no image in flight can leave there
(every threshold >= 1): a request at threshold 1 pays for no early head.

On CUDA the hidden states stay on the GPU between segments (IOBinding + OrtValue) and only the
small logits tensors come back to the host; dropping the rows of images that left is a Gather run
on the GPU too. On CPU everything is plain numpy.

A backend is two calls, `run(segment, x, need_logits) -> (hidden, logits)` and `keep(hidden, rows)`,
over segments that say whether they have a hidden output and a skippable head (`gated`): onnxruntime
here (`_HostIO`, `_BoundIO`), OpenVINO in service/backends/openvino.py. Exit compaction, the head
gate's rule and the FLOPs bookkeeping are this module's, the same for every backend.
"""

import base64
import contextlib
import functools
import hashlib
import io
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

from dynadapter.contract import confidence
from dynadapter.contract.model_repository import HEAD_GATE_INPUT, ModelLoadError
from dynadapter.service.backends.openvino import DEVICE as OPENVINO_DEVICE
from dynadapter.service.backends.openvino import OpenVinoSegment
from dynadapter.service.backends.openvino import open_segments as open_openvino
from dynadapter.service.deadlines import NO_DEADLINE, ExitReason, SegmentTimes

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderPreference = Literal["auto", "cuda", "cpu"]
Backend = Literal["onnxruntime", "openvino"]

_ORT_WARNING, _ORT_ERROR, _ORT_FATAL = 2, 3, 4

# Gather(hidden[rows, tokens, dim], indices[kept_rows], axis=0) -> kept, opset 13. Serialized once
# with onnx.helper because the serving image has no `onnx` package; the test suite rebuilds it and
# checks these bytes. It drops the rows of images that left, on the device that holds `hidden`.
_GATHER_ROWS_ONNX = base64.b64decode(
    "CAgSC2R5bi1hZGFwdGVyOrQBCiwKBmhpZGRlbgoHaW5kaWNlcxIEa2VwdCIGR2F0aGVyKgsKBGF4aXMYAKABAhILZ2F0aGVy"
    "X3Jvd3NaKQoGaGlkZGVuEh8KHQgBEhkKBhIEcm93cwoIEgZ0b2tlbnMKBRIDZGltWh4KB2luZGljZXMSEwoRCAcSDQoLEglr"
    "ZXB0X3Jvd3NiLAoEa2VwdBIkCiIIARIeCgsSCWtlcHRfcm93cwoIEgZ0b2tlbnMKBRIDZGltQgQKABAN"
)


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


def cuda_usable() -> bool:
    """True when onnxruntime's CUDA provider really runs here, not merely when it is installed.

    onnxruntime-gpu lists CUDAExecutionProvider on machines without a GPU or CUDA libraries, then
    logs errors and quietly falls back to CPU; so open a tiny session, run it, and check.
    """
    if CUDA not in ort.get_available_providers():
        return False
    preload_cuda_libraries()
    ort.set_default_logger_severity(_ORT_FATAL)  # the failed attempt logs errors we expect
    try:
        session = ort.InferenceSession(_GATHER_ROWS_ONNX, providers=[CUDA])
        if CUDA not in session.get_providers():
            return False
        feed = {"hidden": np.ones((2, 1, 1), np.float32), "indices": np.array([1], np.int64)}
        return session.run(None, feed)[0].shape == (1, 1, 1)
    except Exception:  # onnxruntime's pybind errors share no base class worth naming
        return False
    finally:
        ort.set_default_logger_severity(_ORT_WARNING)


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries that pip installed (the nvidia-* wheels) before a CUDA session opens.

    onnxruntime-gpu does not search the nvidia wheels itself (torch, when imported first, would have
    loaded them; the serving image has no torch). `preload_dlls` exists from onnxruntime 1.21 on and
    reports with print(), so its words go to the log instead of stdout.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    report = io.StringIO()
    try:
        with contextlib.redirect_stdout(report):
            preload()
    except Exception as err:  # a broken install: the CUDA probe after this finds CUDA unusable and says so
        logger.warning("onnxruntime.preload_dlls failed: %s", err)
    if report.getvalue().strip():
        logger.info("onnxruntime.preload_dlls: %s", " ".join(report.getvalue().split()))


def select_providers(preference: ProviderPreference) -> list[str]:
    """Execution providers for a preference; CPU stays last so unsupported ops still run."""
    if preference == "cpu":
        return [CPU]
    if cuda_usable():
        return [CUDA, CPU]
    if preference == "cuda":
        raise ModelLoadError("CUDA was requested (providers=cuda) but no usable CUDA GPU was found")
    return [CPU]


class SegmentIO(Protocol):
    """A backend's two calls. `run`: one segment on a batch -> (hidden, kept where the backend keeps
    it, or None after the last segment; logits [rows, C] numpy, [0, C] where the head was skipped).
    `keep`: the rows of a hidden state whose images go on."""

    def run(self, segment: Any, x: Any, need_logits: bool) -> tuple[Any, np.ndarray]: ...

    def keep(self, hidden: Any, rows: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class _Segment:
    session: ort.InferenceSession
    input_name: str  # "image" for segment 0, the hidden state after
    has_hidden: bool  # False for the last segment
    gated: bool  # the exit head runs only when fed need_logits=True

    def feed_flag(self, need_logits: bool) -> dict[str, np.ndarray]:
        return {HEAD_GATE_INPUT: np.array(need_logits)} if self.gated else {}


class _HostIO:
    """CPU: numpy in, numpy out."""

    def run(self, segment: _Segment, x: np.ndarray, need_logits: bool) -> tuple[np.ndarray | None, np.ndarray]:
        names = ["logits", "hidden"] if segment.has_hidden else ["logits"]
        logits, *hidden = segment.session.run(names, {segment.input_name: x, **segment.feed_flag(need_logits)})
        return (hidden[0] if hidden else None), logits

    def keep(self, hidden: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return hidden[rows]


class _BoundIO:
    """IOBinding: hidden states stay OrtValues on `device` between segments; only logits come back.

    On CUDA this keeps them on the GPU for the whole cascade. On CPU it is the same code path with
    no copies to save, which lets the tests exercise it on a machine without a GPU.
    """

    def __init__(self, options: ort.SessionOptions, device: Literal["cuda", "cpu"], device_id: int = 0) -> None:
        self._device = device
        self._device_id = device_id
        provider = (CUDA, {"device_id": device_id}) if device == "cuda" else CPU
        self._gather = ort.InferenceSession(_GATHER_ROWS_ONNX, options, providers=[provider])

    def run(
        self, segment: _Segment, x: np.ndarray | ort.OrtValue, need_logits: bool
    ) -> tuple[ort.OrtValue | None, np.ndarray]:
        binding = segment.session.io_binding()
        if isinstance(x, np.ndarray):
            binding.bind_cpu_input(segment.input_name, x)  # the image batch: one upload
        else:
            binding.bind_ortvalue_input(segment.input_name, x)
        for name, flag in segment.feed_flag(need_logits).items():
            binding.bind_cpu_input(name, flag)
        binding.bind_output("logits", "cpu")
        if segment.has_hidden:
            binding.bind_output("hidden", self._device, self._device_id)
        segment.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        logits, *hidden = binding.get_outputs()
        return (hidden[0] if hidden else None), logits.numpy()

    def keep(self, hidden: ort.OrtValue, rows: np.ndarray) -> ort.OrtValue:
        binding = self._gather.io_binding()
        binding.bind_ortvalue_input("hidden", hidden)
        binding.bind_cpu_input("indices", rows.astype(np.int64))
        binding.bind_output("kept", self._device, self._device_id)
        self._gather.run_with_iobinding(binding)
        return binding.get_outputs()[0]


class SegmentRunner:
    """One session (compiled model) per segment, run as an early-exit cascade."""

    def __init__(
        self,
        segment_paths: Sequence[Path],
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 0,
        num_classes: int | None = None,
        io_binding: bool | None = None,
        backend: Backend = "onnxruntime",
        allow_spinning: bool = True,
    ) -> None:
        """`backend`: onnxruntime (ONNX segments, on `providers`) or openvino (OpenVINO IR segments, CPU).
        `io_binding`: keep hidden states in OrtValues between segments; default: on CUDA only.
        `intra_op_threads`: threads per segment run, 0 = the runtime's default. `ModelLoadError` when a
        segment cannot be opened or disagrees with the manifest (`num_classes`). `allow_spinning`:
        onnxruntime's idle threads spin (its default); off is faster on shared or small machines."""
        self.backend: Backend = backend
        self.times = SegmentTimes(len(segment_paths))  # for deadlines: each segment's time per batch size
        self._segments: Sequence[_Segment | OpenVinoSegment]
        self._io: SegmentIO
        if backend == "openvino":
            self._segments, self._io = open_openvino(segment_paths, intra_op_threads, num_classes)
            self.providers: list[str] = [f"openvino:{OPENVINO_DEVICE}"]
            return
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # a segment is one chain of blocks; no parallel branches
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        options.log_severity_level = _ORT_ERROR
        segments = [
            _open_segment(path, options, providers, last=k == len(segment_paths) - 1)
            for k, path in enumerate(segment_paths)
        ]
        if num_classes is not None:
            _check_classes(segments, segment_paths, num_classes)
        self._segments = segments
        self.providers = segments[0].session.get_providers()
        on_gpu = self.providers[0] == CUDA
        bound = on_gpu if io_binding is None else io_binding
        self._io = _BoundIO(options, "cuda" if on_gpu else "cpu") if bound else _HostIO()

    @property
    def device(self) -> str:
        """Where the segments run: "cuda" or "cpu"."""
        return "cuda" if self.providers[0] == CUDA else "cpu"

    @property
    def num_exits(self) -> int:
        return len(self._segments)

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
        x: np.ndarray | ort.OrtValue = np.ascontiguousarray(images, dtype=np.float32)
        for k, segment in enumerate(self._segments):
            last = k == self.num_exits - 1
            pending = ~answered[alive]
            may_leave = pending & self._may_leave(k, per_exit[alive])
            rushed = pending & self._late(k, deadlines[alive], perf_counter() + self.times.estimate(k, len(alive)))
            need_logits = bool(may_leave.any() or rushed.any() or trace is not None)
            start = perf_counter()
            hidden, logits = self._io.run(segment, x, need_logits)
            seconds = perf_counter() - start
            self.times.record(k, len(alive), seconds)
            reasons = np.full(len(alive), None, dtype=object)  # why each image leaves here, None: it goes on
            confidences = confidence(logits) if need_logits else None
            if confidences is None:
                skipped += (k,) if segment.gated else ()
            elif last:
                reasons[pending] = "last"
            else:
                confident = may_leave & (confidences >= per_exit[alive, k])
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
            x = hidden if staying.size == len(leaving) else self._io.keep(hidden, staying)

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
        """Which images may leave at exit k: all at the last; elsewhere those whose threshold is < 1."""
        if k == self.num_exits - 1:
            return np.ones(len(thresholds), dtype=bool)
        return thresholds[:, k] < 1.0


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


def _open_segment(path: Path, options: ort.SessionOptions, providers: Sequence[str], last: bool) -> _Segment:
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own pybind types for bad files
        raise ModelLoadError(f"{path}: onnxruntime cannot load segment: {err}") from err
    inputs = [arg.name for arg in session.get_inputs() if arg.name != HEAD_GATE_INPUT]
    gated = len(inputs) < len(session.get_inputs())
    outputs = {arg.name for arg in session.get_outputs()}
    expected_outputs = {"logits"} if last else {"logits", "hidden"}
    # The one data input (besides a head gate's flag) is taken by position, not name: ONNX forbids a
    # graph input and output of the same name, so a middle segment's "hidden" input gets another
    # name ("hidden_in" from the exporter, "hidden.1" from torch's default).
    if len(inputs) != 1 or not expected_outputs <= outputs:
        raise ModelLoadError(
            f"{path}: segment has inputs {inputs} and outputs {sorted(outputs)}, "
            f"expected one input (besides {HEAD_GATE_INPUT}) and outputs {sorted(expected_outputs)}"
        )
    return _Segment(session, inputs[0], has_hidden=not last, gated=gated)


def _check_classes(segments: list[_Segment], paths: Sequence[Path], num_classes: int) -> None:
    for segment, path in zip(segments, paths, strict=True):
        logits = next(arg for arg in segment.session.get_outputs() if arg.name == "logits")
        width = logits.shape[-1]
        if isinstance(width, int) and width != num_classes:
            raise ModelLoadError(f"{path}: logits have {width} classes, the manifest has {num_classes} labels")
