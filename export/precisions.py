"""Further precisions of an exported model: OpenVINO IR in fp32 and int8 (NNCF post-training quantization).

The portable fp32 ONNX segments stay what they are (docs/model-repository.md). Beside them this
module writes, per segment, ``segment_k.fp32.xml/.bin`` (OpenVINO IR converted from the segment
*without* its head gate) and ``segment_k.int8.xml/.bin`` (that IR quantized by NNCF). OpenVINO
refuses the gate's ONNX ``If`` ("'then' and 'else' branches have to have the same number of
outputs"), so an IR segment carries its head as an ordinary output and the OpenVINO backend compiles
it twice, with and without the head, and picks one per batch (service/backends/openvino.py).

Why OpenVINO IR rather than quantized ONNX for int8: measured on the demo model's segments (issue
18), OpenVINO int8 served 4.3x onnxruntime fp32's throughput, onnxruntime's own static QDQ int8
1.4x with 93.8% argmax agreement; IR is also what OpenVINO loads without an ONNX frontend pass.

Each precision gets, from its own logits: parity against PyTorch (max |diff| on random images, bound
relative to the logits as for the ONNX segments: export/parity.py; argmax agreement on the validation
split), and its own calibration table and modes (thresholds chosen on fp32 confidences are not reused
for int8 ones), chosen on the images the run's own thresholds were: its calibration set
(training/calibration_set.py: the validation split, then the ``--calibration-corrupted`` copies), so that
a precision's modes hold on the same shifted inputs as the ONNX segments' do. int8 is quantized on
images of the training task: ``CALIBRATION_IMAGES`` images of the run's train split, drawn with a fixed
seed and recorded in the manifest (``quantization``).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynadapter.contract import (
    Calibration,
    Manifest,
    PrecisionExport,
    PrecisionSegment,
    ThresholdChoice,
    precision_key,
    sha256_file,
)
from dynadapter.errors import ExportError
from dynadapter.export import int8_gate
from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP
from dynadapter.export.parity import PARITY_TOLERANCE, parity_error
from dynadapter.models.flops import deployed_cumulative_gflops
from dynadapter.training.calibration_set import calibrate_logits, calibration_dataset
from dynadapter.training.data import ImageDataset, run_split
from dynadapter.training.evaluate import loader_logits
from dynadapter.training.run_dir import Run

log = logging.getLogger(__name__)

#: What `dynadapter export --precision` accepts; fp32 (the ONNX segments) is always written.
PRECISION_CHOICES = ("fp32", "int8")
CALIBRATION_IMAGES = 64  # NNCF statistics; 64 matched fp32 argmax on 100% of 500 MNIST test images
CALIBRATION_SEED = 0
#: fp32 IR against PyTorch: the same bound as the ONNX segments' (max |logit difference| over
#: max(1, largest |PyTorch logit|), per exit: export/parity.py `Parity`).
FP32_TOLERANCE = PARITY_TOLERANCE
#: How int8 is quantized (`dynadapter export --int8-method`): ``ptq`` NNCF's post-training quantization,
#: ``accuracy-control`` NNCF's ``quantize_with_accuracy_control`` (layers that cost accuracy stay fp32),
#: ``auto`` the first, then the second where the first fails the gate.
INT8_METHODS = ("auto", "ptq", "accuracy-control")
#: Validation images NNCF ranks a segment's quantizers on (those whose answers int8 changed most): each
#: quantizer costs one compilation and a pass of the chain over them; with 100, ranking the demo's first
#: segment (28 quantizers) took 7 minutes on 2 busy cores.
RANKING_IMAGES = 32
METHOD_TEXT = {
    "ptq": "nncf.quantize (OpenVINO, model_type=transformer: SmoothQuant, fast bias correction)",
    "accuracy-control": "nncf.quantize_with_accuracy_control (OpenVINO, model_type=transformer, per segment; "
    "metric: the int8 gate's worst validation accuracy difference vs fp32 over exits and modes)",
}
# OpenVINO picks bf16 by default on CPUs that have it, which is slower than fp32 without AMX and
# changes the numbers: every precision here is compiled as written.
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
#: Logits that calibration and parity read: one thread, so that they do not depend on how the work
#: was split. With the machine's threads, int8 logits moved between compilations under load (5 of 200
#: validation answers of a near-chance test model at one threshold), and so would the int8 modes.
REPRODUCIBLE_CONFIG = {**OV_CONFIG, "INFERENCE_NUM_THREADS": 1}


def parse_precisions(text: str) -> list[str]:
    """``"fp32,int8"`` -> ``["fp32", "int8"]``; ExportError naming the choices for anything else."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PRECISION_CHOICES]
    if unknown or not names:
        raise ExportError(f"unknown precision(s) {unknown or [text]}; choose from {', '.join(PRECISION_CHOICES)}")
    return list(dict.fromkeys(["fp32", *names]))


def cpu_runtime_precisions() -> list[str]:
    """fp32 and int8 where the CPU runtime (openvino and nncf, the `train` extra) is installed, else fp32
    alone: what ``dynadapter export`` writes by default (``--precision auto``)."""
    return ["fp32", "int8"] if all(importlib.util.find_spec(name) for name in ("openvino", "nncf")) else ["fp32"]


def openvino_precisions(
    run: Run,
    ungated: Sequence[Path],
    folder: Path,
    precisions: Sequence[str],
    max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP,
    method: str = "auto",
    int8_required: bool = True,
) -> dict[str, PrecisionExport]:
    """Write the OpenVINO IR precisions of ``ungated`` (segments without head gate) into ``folder``.

    ``precisions`` as from `parse_precisions`; with only ``fp32`` nothing is written (the ONNX
    segments are the fp32 export). int8 must pass the gate (export/int8_gate.py) with
    ``max_accuracy_drop``; ``method`` (`INT8_METHODS`) says how it is quantized. Where it fails, int8 is
    left out with a warning, or, with ``int8_required``, ``ExportError``. Returns the manifest's
    ``precisions`` entries.
    """
    if precisions == ["fp32"]:
        return {}
    import openvino as ov

    calibration_set = calibration_images(run)
    val = split_images(run, "val")
    batches = [
        (torch.from_numpy(chunk), torch.zeros(len(chunk))) for chunk in np.array_split(val[0], -(-len(val[0]) // 128))
    ]
    reference = loader_logits(run.model, batches)[0].numpy()  # [K, N, C]
    fp32 = [ov.convert_model(str(path)) for path in ungated]
    files = [_save(ov, model, folder / f"segment_{k}.fp32.xml") for k, model in enumerate(fp32)]
    fp32_export, fp32_logits = _describe(run, "fp32", files, (val, calibration_set), reference)
    out = {precision_key("fp32", "openvino"): fp32_export}
    log.info("fp32 openvino: %s", _parity_text(fp32_export.parity))
    if "int8" in precisions:
        sides = (reference, fp32_logits, fp32_export)
        int8 = _int8(run, fp32, folder, (val, calibration_set), sides, max_accuracy_drop, method)
        if int8 is not None:
            out[precision_key("int8", "openvino")] = int8
        elif int8_required:
            raise ExportError(
                "int8 segments fail the accuracy gate (the line above): raise --int8-max-accuracy-drop or export fp32"
            )
    return out


def gate_lines(manifest: Manifest) -> list[str]:
    """One line per precision of an exported version, saying which gate it passed: fp32 a bound on
    |logit difference| against PyTorch, int8 one on validation accuracy against fp32 (export/int8_gate.py)."""
    lines = [f"fp32 onnx: {_parity_text(manifest.parity)}"]
    for key, entry in (manifest.precisions or {}).items():
        gate = entry.parity.get("gate")
        if isinstance(gate, dict):
            fields = {name: gate[name] for name in int8_gate.GateResult.__dataclass_fields__}
            lines.append(f"{entry.runtime} {int8_gate.GateResult(**fields).line()}")
        else:
            lines.append(f"{key.replace('-', ' ')}: {_parity_text(entry.parity)}")
    return lines


def _parity_text(parity: dict[str, object]) -> str:
    """The logit parity in words: the max difference, and the bound relative to the logits where the
    export recorded their scale (older ones did not: the bound was absolute)."""
    text = f"max |logit diff| vs PyTorch {parity['max_abs_diff']:.1e}"
    scales, tolerance = parity.get("logit_scale"), parity.get("tolerance", PARITY_TOLERANCE)
    if not isinstance(scales, list):
        return f"{text} (bound {tolerance:g})"
    return f"{text} at logits up to {max(scales):.3g} (bound {tolerance:g} x max(1, |logit|), per exit)"


def _int8(
    run: Run,
    fp32: Sequence[Any],
    folder: Path,
    images: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    fp32_side: tuple[np.ndarray, np.ndarray, PrecisionExport],
    bound: float,
    method: str,
) -> PrecisionExport | None:
    """Quantize by ``method`` (plain PTQ first under ``auto``, accuracy control where it fails the gate) and
    describe the first attempt that passes; None (its files removed) when none does. ``images``: the
    validation split and the calibration set, each (images, targets) as `_describe` reads them."""
    import openvino as ov

    val = images[0]
    reference, fp32_logits, fp32_export = fp32_side
    fp32_modes = val_mode_accuracy(fp32_export)
    calib, quantization = _calibration_set(run)
    attempts: list[dict[str, object]] = []
    for attempt in ["ptq", "accuracy-control"] if method == "auto" else [method]:
        if attempt == "ptq":
            models = quantize(fp32, calib)
        else:
            cum = deployed_cumulative_gflops(run.model)
            models = quantize_accuracy_control(fp32, calib, val, fp32_logits, cum, bound)
        files = [_save(ov, model, folder / f"segment_{k}.int8.xml") for k, model in enumerate(models)]
        export, logits = _describe(run, "int8", files, images, reference)
        modes = val_mode_accuracy(export)
        gate = int8_gate.judge(attempt, logits, fp32_logits, val[1], modes, fp32_modes, bound)
        attempts.append({**gate.record(), "fake_quantize_ops": [_fake_quantize_ops(m) for m in models]})
        (log.info if gate.passed else log.warning)("%s", gate.line())
        if gate.passed:
            record = {**quantization, "method": METHOD_TEXT[attempt], "attempts": attempts}
            parity = {**export.parity, "gate": gate.record(), "max_accuracy_drop": bound}
            return export.model_copy(update={"quantization": record, "parity": parity})
    for xml, weights in files:
        xml.unlink()
        weights.unlink()
    log.warning("int8 not written: serving this version needs fp32 (ONNX, or OpenVINO IR fp32)")
    return None


def val_mode_accuracy(export: PrecisionExport) -> dict[str, float]:
    """Each mode's accuracy at its thresholds on the clean validation images ({mode: fraction}): what the
    int8 gate compares. With ``--calibration-corrupted`` the thresholds are chosen on the whole calibration
    set, but the gate stays on the validation images, as its exit accuracies and accuracy control's metric
    do, and as its bound (1 point, sized to one validation image's share) was chosen for; ``accuracy`` is
    then the whole set's, and ``val_accuracy`` the clean part's."""
    modes = export.modes.items()
    return {name: mode.accuracy if mode.val_accuracy is None else mode.val_accuracy for name, mode in modes}


def _fake_quantize_ops(model: Any) -> int:
    """FakeQuantize operations in a quantized segment: fewer where accuracy control kept layers in fp32."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def quantize(fp32: Sequence[Any], images: np.ndarray) -> list[Any]:
    """NNCF post-training int8 of each segment, calibrated on the hidden states the fp32 chain computes
    for ``images`` [N, 3, H, W]: SmoothQuant (transformer model type) and bias correction."""
    import nncf
    import openvino as ov

    core = ov.Core()
    x, out = images, []
    for k, model in enumerate(fp32):
        # Statistics and the next segment's inputs come from the fp32 segment, one image at a time.
        inputs = [x[i : i + 1] for i in range(len(x))]
        name = model.inputs[0].get_any_name()
        dataset = nncf.Dataset(inputs, lambda item, name=name: {name: item})
        out.append(
            nncf.quantize(
                model,
                dataset,
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(inputs),
                fast_bias_correction=True,
            )
        )
        if k < len(fp32) - 1:
            compiled = core.compile_model(model, "CPU", OV_CONFIG)
            x = compiled({model.inputs[0].get_any_name(): x})["hidden"]
    return out


def quantize_accuracy_control(
    fp32: Sequence[Any],
    images: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    fp32_logits: np.ndarray,
    cumulative_gflops: Sequence[float],
    bound: float,
) -> list[Any]:
    """NNCF's accuracy-aware int8 of each segment in turn (``nncf.quantize_with_accuracy_control``):
    quantized as `quantize` does, then the quantizers that cost the most are reverted to fp32 until the
    gate's margin (export/int8_gate.py ``margin``) holds within ``bound``.

    The metric of segment k is that margin on the validation split ``val`` (images [N, 3, H, W],
    targets [N]) for the whole chain: the int8 segments before k (as already chosen), the candidate, and
    the fp32 segments after it (an int8 segment's loss shows at later exits too); ``fp32_logits``
    [K, N, C] is the fp32 side. Segment k's allowed drop is what the segments before it left of
    ``bound``, so the chain ends within it where NNCF finds a solution."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    core = ov.Core()
    compiled = [core.compile_model(model, "CPU", REPRODUCIBLE_CONFIG) for model in fp32]
    val_images, targets = val
    cal_x, val_x, prefix, out = images, val_images, np.empty((0, len(targets), fp32_logits.shape[-1])), []
    for k, model in enumerate(fp32):
        name = model.inputs[0].get_any_name()

        def metric(
            candidate: Any, items: Iterable[Any], k: int = k, x: np.ndarray = val_x, before: np.ndarray = prefix
        ) -> tuple[float, list[float]]:
            index = np.fromiter(items, dtype=np.int64)
            result = candidate({candidate.inputs[0]: x[index]})
            logits = [*before[:, index], result["logits"]]
            for segment in compiled[k + 1 :]:  # the fp32 rest of the chain, from the candidate's hidden
                result = segment({segment.inputs[0]: result["hidden"]})
                logits.append(result["logits"])
            chain, target = np.stack(logits), targets[index]
            # NNCF computes a relative drop too (1 - quantized / initial): 1 + margin keeps it off zero.
            # Per image: the fraction of exits answering it right (NNCF ranks layers on the images
            # whose values the quantized model changed most).
            return 1.0 + int8_gate.margin(chain, fp32_logits[:, index], target, cumulative_gflops), [
                float(v) for v in (chain.argmax(-1) == target).mean(axis=0)
            ]

        allowed = max(0.0, bound + metric(compiled[k], range(len(targets)))[0] - 1.0)
        calibration = nncf.Dataset([cal_x[i : i + 1] for i in range(len(cal_x))], lambda item, name=name: {name: item})
        validation = nncf.Dataset(list(range(len(targets))), lambda i, name=name, x=val_x: {name: x[i : i + 1]})
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration,
            validation,
            metric,
            max_drop=allowed,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(cal_x),
            fast_bias_correction=True,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                ranking_subset_size=min(RANKING_IMAGES, len(targets))
            ),
        )
        out.append(quantized)
        int8 = core.compile_model(quantized, "CPU", REPRODUCIBLE_CONFIG)
        result = int8({int8.inputs[0]: val_x})
        prefix = np.concatenate([prefix, result["logits"][None]])
        if k < len(fp32) - 1:
            val_x = result["hidden"]
            cal_x = compiled[k]({compiled[k].inputs[0]: cal_x})["hidden"]
    return out


def chained_openvino_logits(xml_paths: Sequence[Path], images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Every exit's logits [K, N, C] of IR segments chained on ``images`` (every head run)."""
    import openvino as ov

    core = ov.Core()
    compiled = [core.compile_model(str(path), "CPU", REPRODUCIBLE_CONFIG) for path in xml_paths]
    chunks = []
    for start in range(0, len(images), batch):
        x, logits = images[start : start + batch], []
        for segment in compiled:
            result = segment({segment.inputs[0]: x})
            logits.append(result["logits"])
            x = result["hidden"] if "hidden" in {name for o in segment.outputs for name in o.names} else None
        chunks.append(np.stack(logits))
    return np.concatenate(chunks, axis=1)


def _describe(
    run: Run,
    precision: str,
    files: list[tuple[Path, Path]],
    images: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    reference: np.ndarray,
) -> tuple[PrecisionExport, np.ndarray]:
    """Parity and calibration of one precision from its own logits, and its validation logits [K, N, C];
    ExportError for fp32 beyond tolerance. ``images``: the validation split (images [N, 3, H, W], targets
    [N]) and the calibration set (`calibration_images`: [N', 3, H, W], [N']); ``reference``: PyTorch's
    logits [K, N, C] on the validation split. The thresholds are chosen on the calibration set, as the run's
    own were (`calibration_set.calibrate_logits`); argmax agreement and accuracy are on the validation
    split. int8 is judged by the caller (the gate)."""
    (val_images, val_targets), (cal_images, cal_targets) = images
    xml = [x for x, _ in files]
    parity = parity_error(run.model, xml, run.preprocessing.size, chain=chained_openvino_logits)
    if precision == "fp32":
        parity.check(FP32_TOLERANCE, "fp32 OpenVINO segments")
    logits = chained_openvino_logits(xml, val_images)
    agreement = [float(a) for a in (logits.argmax(-1) == reference.argmax(-1)).mean(axis=1)]
    # Without copies the calibration set is the validation split itself: its logits are not run twice.
    cal_logits = logits if len(cal_targets) == len(val_targets) else chained_openvino_logits(xml, cal_images)
    cal = calibrate_logits(cal_logits, cal_targets, run.model, run.config.train, len(val_targets))
    export = PrecisionExport(
        precision=precision,  # type: ignore[arg-type]
        runtime="openvino",
        segments=[
            PrecisionSegment(index=k, file=x.name, sha256=sha256_file(x), weights=b.name, weights_sha256=sha256_file(b))
            for k, (x, b) in enumerate(files)
        ],
        calibration=Calibration.model_validate(cal["calibration"]),
        modes={name: ThresholdChoice.model_validate(mode) for name, mode in cal["modes"].items()},
        parity={
            # int8's logits move by quantization noise: its bound is on answers (the gate), not on logits
            **parity.record(FP32_TOLERANCE if precision == "fp32" else None),
            "argmax_agreement": agreement,
            "argmax_split": "val",
            "val_accuracy_last_exit": float((logits[-1].argmax(-1) == val_targets).mean()),
            "pytorch_val_accuracy_last_exit": float((reference[-1].argmax(-1) == val_targets).mean()),
            "max_accuracy_drop": None,
        },
    )
    return export, logits


def _save(ov: Any, model: Any, xml: Path) -> tuple[Path, Path]:
    ov.save_model(model, str(xml), compress_to_fp16=False)  # fp16 weights would change fp32's numbers
    return xml, xml.with_suffix(".bin")


def split_images(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs float32 [N, 3, H, W] and targets [N] of the split the run recorded."""
    source = _source(run, split)
    return _images(run, source, range(len(source))), np.asarray(source.targets)


def calibration_images(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's calibration set as model inputs float32 [N', 3, H, W] and targets [N']: its recorded
    validation split, then its ``--calibration-corrupted`` copies (`calibration_set.calibration_dataset`,
    from the options the run recorded: the same images, and copies, its own thresholds were chosen on)."""
    val = ImageDataset(_source(run, "val"), run.preprocessing, run.config.train.max_pixels)
    dataset = calibration_dataset(val, run.config.train)
    items = [dataset[j] for j in range(len(dataset))]
    images = np.stack([np.asarray(image) for image, _ in items]).astype(np.float32)
    return images, np.asarray([int(target) for _, target in items], dtype=np.int64)


def _source(run: Run, split: str) -> Any:
    source = run_split(run.path or Path("."), run.config, split)
    if len(source) == 0:
        raise ExportError(f"the {split} split of {run.config.data} is empty: cannot calibrate another precision")
    return source


def _images(run: Run, source: Any, indices: Iterable[int]) -> np.ndarray:
    max_pixels = run.config.train.max_pixels
    return np.stack([source.load(int(i), run.preprocessing, max_pixels) for i in indices]).astype(np.float32)


def _calibration_set(run: Run) -> tuple[np.ndarray, dict[str, object]]:
    """``CALIBRATION_IMAGES`` train-split images (fixed seed) and the record of which they are."""
    source = _source(run, "train")
    count = min(CALIBRATION_IMAGES, len(source))
    indices = np.sort(np.random.default_rng(CALIBRATION_SEED).choice(len(source), count, replace=False))
    images = _images(run, source, indices)
    record = {
        "nncf": _version("nncf"),
        "openvino": _version("openvino"),
        "calibration_set": {
            "data": run.config.data,
            "split": "train",
            "seed": run.config.train.seed,
            "num_images": count,
            "indices": [int(i) for i in indices],
        },
    }
    return images, record


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
