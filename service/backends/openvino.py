"""The OpenVINO backend of the cascade: OpenVINO IR segments (docs/model-repository.md, "Precisions").

It offers the cascade the same interface as onnxruntime's (service/backends/base.py: `run` a segment
on a batch, `keep` the rows of the hidden state whose images go on). An IR segment has no head gate inside: OpenVINO
refuses the ONNX gate's `If`, so each early segment is compiled twice, with its exit head and as the
trunk alone (the same IR with the `logits` result left out: OpenVINO compiles only what a result
needs), and `run` picks one per batch. Hidden states stay numpy arrays in host memory (CPU only).

Every model is compiled with fp32 inference precision: OpenVINO would otherwise pick bf16 on CPUs
that have it, which is slower without AMX and changes the numbers; int8 IR runs its int8 kernels
either way. One stream, latency hint (the micro-batcher runs one batch at a time), with the cores this process
may use (`base.default_threads`: its affinity mask capped by its cgroup's CPU quota).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.contract.model_repository import HIDDEN_OUTPUT, LOGITS_OUTPUT, ModelLoadError
from dynadapter.cpu import cpu_info
from dynadapter.service.backends.base import BackendName, default_threads

DEVICE = "CPU"


def available() -> bool:
    """True when the openvino package can be imported here."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


#: CPU flags of int8 dot-product instructions (4 byte products per 32-bit lane): with none of them
#: int8 matrix products run at about fp32's rate (measured on an AVX2 AMD EPYC, docs/results.md).
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_accelerated(cpuinfo: str | None = None) -> bool:
    """True when this CPU has int8 dot-product instructions (from /proc/cpuinfo's flags; True where
    that file cannot be read, e.g. not Linux, so a model's int8 segments are not passed over blindly)."""
    cpu = cpu_info(cpuinfo)
    return bool(cpu.flags & INT8_FLAGS) or not cpu.readable


@dataclass(frozen=True)
class OpenVinoSegment:
    full: Any  # ov.CompiledModel: the stage and its exit head
    trunk: Any  # ov.CompiledModel without the head (None for the last segment, whose head always runs)
    num_classes: int
    has_hidden: bool
    gated: bool  # the head can be skipped: `trunk` exists


class OpenVinoBackend:
    """A model's OpenVINO IR segments, compiled for the CPU (`SegmentBackend`); numpy in, numpy out.

    Compiled once per served model version and kept until it is unloaded; `run` and `keep` are called
    from one inference thread at a time. `ModelLoadError` as `open_segments`.
    """

    name: BackendName = "openvino"
    providers = [f"openvino:{DEVICE}"]
    device = "cpu"

    def __init__(self, paths: Sequence[Path], threads: int = 0, num_classes: int | None = None) -> None:
        self._segments = open_segments(paths, threads, num_classes)

    @property
    def num_segments(self) -> int:
        return len(self._segments)

    def gated(self, k: int) -> bool:
        return self._segments[k].gated

    def run(self, k: int, x: np.ndarray, need_logits: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """Segment k on a batch; its head-less compilation when no image can leave at this exit."""
        segment = self._segments[k]
        skip = segment.gated and not need_logits
        result = (segment.trunk if skip else segment.full)([x])
        logits = np.zeros((0, segment.num_classes), np.float32) if skip else result[LOGITS_OUTPUT]
        return (result[HIDDEN_OUTPUT] if segment.has_hidden else None), logits

    def keep(self, hidden: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return hidden[rows]


def open_segments(paths: Sequence[Path], threads: int = 0, num_classes: int | None = None) -> list[OpenVinoSegment]:
    """Compile every IR segment (``segment_k.<precision>.xml``); `ModelLoadError` when one cannot be
    read or has other outputs or classes than the manifest says. ``threads``: 0 = `base.default_threads()`."""
    import openvino as ov

    core = ov.Core()
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "f32",
        "NUM_STREAMS": 1,  # one batch at a time: a second stream would only split the cores
        "PERFORMANCE_HINT": "LATENCY",
        # OpenVINO's own default counts the host's cores, not a container's CPU quota.
        "INFERENCE_NUM_THREADS": threads or default_threads(),
    }
    segments = []
    for k, path in enumerate(paths):
        last = k == len(paths) - 1
        try:
            model = core.read_model(str(path))
            outputs = {name for output in model.outputs for name in output.get_names()}
            expected = {LOGITS_OUTPUT} if last else {LOGITS_OUTPUT, HIDDEN_OUTPUT}
            if len(model.inputs) != 1 or not expected <= outputs:
                raise ModelLoadError(
                    f"{path}: segment has {len(model.inputs)} inputs and outputs {sorted(outputs)}, "
                    f"expected one input and outputs {sorted(expected)}"
                )
            width = model.output(LOGITS_OUTPUT).get_partial_shape()[-1]
            classes = width.get_length() if width.is_static else num_classes
            if num_classes is not None and classes != num_classes:
                raise ModelLoadError(f"{path}: logits have {classes} classes, the manifest has {num_classes} labels")
            full = core.compile_model(model, DEVICE, config)
            trunk = None if last else core.compile_model(_trunk(core, path), DEVICE, config)
        except ModelLoadError:
            raise
        except Exception as err:  # openvino raises RuntimeError subclasses with the reason inside
            raise ModelLoadError(f"{path}: OpenVINO cannot load segment: {err}") from err
        segments.append(OpenVinoSegment(full, trunk, int(classes or 0), has_hidden=not last, gated=not last))
    return segments


def _trunk(core: Any, path: Path) -> Any:
    """The segment without its exit head: a model whose only result is ``hidden``."""
    import openvino as ov

    model = core.read_model(str(path))  # a fresh copy: the full model keeps its own nodes
    hidden = next(r for r in model.get_results() if HIDDEN_OUTPUT in r.output(0).get_names())
    return ov.Model([hidden], model.get_parameters(), f"{model.get_friendly_name()}_trunk")
