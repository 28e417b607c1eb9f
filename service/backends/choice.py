"""Which backend and precision serve a model on this machine (settings `backend`, `precision`).

`auto` (both): onnxruntime on CUDA when a GPU is usable (the fp32 ONNX segments; the GPU path is
unchanged); otherwise the fastest precision the model version has for the CPU: int8 on OpenVINO,
then fp32 on OpenVINO, then fp32 on onnxruntime (measured in that order on the demo model, issue 18
and docs/results.md). int8 leads only on CPUs with int8 dot-product instructions (VNNI, AMX): on an
AVX2 CPU without them int8 measured no faster than fp32, so fp32 (exact) is preferred there.
A model version has int8 segments only where they passed the export's accuracy gate (within 0.3 points
of fp32 at every exit and mode, export/int8_gate.py), so "present" means "passed".
A forced backend or precision that the model version or this machine cannot
serve refuses to start with `ModelLoadError`, rather than quietly serving something else.
"""

from dataclasses import dataclass

from dynadapter.contract.model_repository import (
    FP32_ONNX,
    ModelLoadError,
    ModelVersion,
    load_model,
    model_precisions,
    precision_key,
)
from dynadapter.service.backends import openvino
from dynadapter.service.backends.base import BackendName
from dynadapter.service.backends.onnxruntime import cuda_usable, select_providers
from dynadapter.service.segment_runner import SegmentRunner
from dynadapter.service.settings import Settings

#: CPU precisions, fastest first (on a CPU with int8 dot-product instructions).
CPU_ORDER = ("int8-openvino", "fp32-openvino", FP32_ONNX)


@dataclass(frozen=True)
class Choice:
    backend: BackendName
    precision_key: str  # a key of Manifest.precision_keys


def choose(settings: Settings, offered: list[str], gpu: bool, openvino_present: bool, int8_fast: bool = True) -> Choice:
    """The backend and precision for ``settings``, given the model's ``offered`` precision keys,
    whether a CUDA GPU is usable, whether openvino is installed and whether this CPU has int8
    dot-product instructions (`int8_fast`; without, `auto` prefers fp32). `ModelLoadError` if impossible."""
    backend, precision = settings.backend, settings.precision
    if backend == "openvino" and not openvino_present:
        raise ModelLoadError("backend=openvino was requested but the openvino package is not installed")
    if backend == "onnxruntime" or settings.providers == "cuda" or (backend == "auto" and gpu):
        if precision not in ("auto", "fp32"):
            raise ModelLoadError(f"precision={precision} is served by OpenVINO; onnxruntime serves fp32 here")
        if backend == "openvino":
            raise ModelLoadError("providers=cuda needs backend onnxruntime (OpenVINO serves the CPU)")
        return Choice("onnxruntime", FP32_ONNX)
    runtimes = ["openvino"] if backend == "openvino" else ["openvino", "onnx"] if openvino_present else ["onnx"]
    order = CPU_ORDER if int8_fast else (*CPU_ORDER[1:], CPU_ORDER[0])
    candidates = [
        key
        for key in order
        if key in offered and key.split("-", 1)[1] in runtimes and precision in ("auto", key.split("-", 1)[0])
    ]
    if not candidates:
        wanted = precision_key("fp32" if precision == "auto" else precision, runtimes[0])
        raise ModelLoadError(
            f"no {wanted} segments to serve (the model has {', '.join(offered)}"
            f"{'' if openvino_present else '; openvino is not installed'}): export them with "
            "dynadapter export --precision, or change the backend/precision settings"
        )
    key = candidates[0]
    return Choice("openvino" if key.endswith("-openvino") else "onnxruntime", key)


def check_choice(settings: Settings, name: str, version: str) -> tuple[ModelVersion, Choice]:
    """The model version verified at the precision chosen for it on this machine, and that choice;
    `ModelLoadError` naming the model and version when the settings cannot serve it (what `dynadapter
    serve` checks for every model before it starts, so a forced backend fails as one line)."""
    offered = model_precisions(settings.model_repo, name, version)
    gpu = settings.providers != "cpu" and settings.backend != "openvino" and cuda_usable()
    try:
        choice = choose(settings, offered, gpu, openvino.available(), openvino.int8_accelerated())
    except ModelLoadError as err:
        raise ModelLoadError(f"model {name!r} version {version}: {err}") from None
    return load_model(settings.model_repo, name, version, choice.precision_key), choice


def open_runner(settings: Settings, name: str, version: str) -> tuple[ModelVersion, SegmentRunner]:
    """Load a model version at the precision chosen for it and open its runner (what `Engine.load` serves)."""
    model, choice = check_choice(settings, name, version)
    providers = select_providers(settings.providers) if choice.backend == "onnxruntime" else []
    runner = SegmentRunner(
        model.segment_paths,
        providers,
        intra_op_threads=settings.intra_op_threads,
        num_classes=model.manifest.num_classes,
        backend=choice.backend,
        allow_spinning=settings.allow_spinning,
    )
    return model, runner
