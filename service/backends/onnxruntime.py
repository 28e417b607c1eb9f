"""The onnxruntime backend of the cascade: ONNX segments on CUDA or the CPU (docs/model-repository.md).

A segment exported with a gated exit head (input `need_logits`, export/head_gate.py) is fed that flag
and skips its head when told no image can leave there. On CUDA the hidden states stay on the GPU
between segments (IOBinding + OrtValue) and only the small logits tensors come back to the host;
dropping the rows of images that left is a Gather run on the GPU too. On CPU everything is plain numpy.
"""

import base64
import contextlib
import functools
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from dynadapter.contract.model_repository import HEAD_GATE_INPUT, ModelLoadError
from dynadapter.service.backends.base import BackendName, default_threads

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderPreference = Literal["auto", "cuda", "cpu"]

_ORT_WARNING, _ORT_ERROR, _ORT_FATAL = 2, 3, 4

# Gather(hidden[rows, tokens, dim], indices[kept_rows], axis=0) -> kept, opset 13. Serialized once
# with onnx.helper because the serving image has no `onnx` package; the test suite rebuilds it and
# checks these bytes. It drops the rows of images that left, on the device that holds `hidden`.
GATHER_ROWS_ONNX = base64.b64decode(
    "CAgSC2R5bi1hZGFwdGVyOrQBCiwKBmhpZGRlbgoHaW5kaWNlcxIEa2VwdCIGR2F0aGVyKgsKBGF4aXMYAKABAhILZ2F0aGVy"
    "X3Jvd3NaKQoGaGlkZGVuEh8KHQgBEhkKBhIEcm93cwoIEgZ0b2tlbnMKBRIDZGltWh4KB2luZGljZXMSEwoRCAcSDQoLEglr"
    "ZXB0X3Jvd3NiLAoEa2VwdBIkCiIIARIeCgsSCWtlcHRfcm93cwoIEgZ0b2tlbnMKBRIDZGltQgQKABAN"
)


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
        session = ort.InferenceSession(GATHER_ROWS_ONNX, providers=[CUDA])
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
        self._gather = ort.InferenceSession(GATHER_ROWS_ONNX, options, providers=[provider])

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


class OnnxRuntimeBackend:
    """A model's ONNX segments, one onnxruntime session each (`SegmentBackend`).

    Opened once per served model version and kept until it is unloaded; `run` and `keep` are called
    from one inference thread at a time.
    """

    name: BackendName = "onnxruntime"

    def __init__(
        self,
        segment_paths: Sequence[Path],
        providers: Sequence[str] = (CPU,),
        intra_op_threads: int = 0,
        num_classes: int | None = None,
        io_binding: bool | None = None,
        allow_spinning: bool = False,
    ) -> None:
        """`io_binding`: keep hidden states in OrtValues between segments; default: on CUDA only.
        `intra_op_threads`: threads per segment run, 0 = `base.default_threads` (the cores this process may
        use). `allow_spinning`: idle threads spin waiting for work (onnxruntime's own
        default); off by default here, since the batcher idles between batches and the decode threads and
        the event loop need the cores meanwhile. `ModelLoadError` when a segment cannot be opened or
        disagrees with the manifest (`num_classes`)."""
        options = ort.SessionOptions()
        # onnxruntime's own default is one thread per physical core of the host, blind to a container's
        # CPU quota and to the event loop's and decoders' share.
        options.intra_op_num_threads = intra_op_threads or default_threads()
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
        self.providers: list[str] = segments[0].session.get_providers()
        bound = self.device == "cuda" if io_binding is None else io_binding
        self._io: _HostIO | _BoundIO = (
            _BoundIO(options, "cuda" if self.device == "cuda" else "cpu") if bound else _HostIO()
        )

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == CUDA else "cpu"

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    def gated(self, k: int) -> bool:
        return self._segments[k].gated

    def run(self, k: int, x: Any, need_logits: bool) -> tuple[Any, np.ndarray]:
        return self._io.run(self._segments[k], x, need_logits)

    def keep(self, hidden: Any, rows: np.ndarray) -> Any:
        return self._io.keep(hidden, rows)


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
