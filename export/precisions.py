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

Each precision gets, from its own logits: parity against PyTorch (max |diff| on random images,
argmax agreement on the validation split), and its own calibration table and modes (thresholds
chosen on fp32 confidences are not reused for int8 ones). int8 is calibrated on images of the
training task: ``CALIBRATION_IMAGES`` images of the run's train split, drawn with a fixed seed and
recorded in the manifest (``quantization``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynadapter.contract import (
    Calibration,
    PrecisionExport,
    PrecisionSegment,
    ThresholdChoice,
    precision_key,
    sha256_file,
)
from dynadapter.errors import ExportError
from dynadapter.export.parity import PARITY_BATCH_SIZES, PARITY_TOLERANCE, parity_error
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training.calibration import calibrate, recorded_resampling
from dynadapter.training.data import run_split
from dynadapter.training.evaluate import loader_logits
from dynadapter.training.run_dir import Run

log = logging.getLogger(__name__)

#: What `dynadapter export --precision` accepts; fp32 (the ONNX segments) is always written.
PRECISION_CHOICES = ("fp32", "int8")
CALIBRATION_IMAGES = 64  # NNCF statistics; 64 matched fp32 argmax on 100% of 500 MNIST test images
CALIBRATION_SEED = 0
#: fp32 IR against PyTorch: the same bound as the ONNX segments' (max |logit difference|).
FP32_TOLERANCE = PARITY_TOLERANCE
#: int8 against PyTorch: logits move by quantization noise, so the bound is on answers: the last
#: exit's validation accuracy may drop by at most this much (argmax agreement is recorded too).
INT8_MAX_ACCURACY_DROP = 0.01
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


def openvino_precisions(
    run: Run,
    ungated: Sequence[Path],
    folder: Path,
    precisions: Sequence[str],
    max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP,
) -> dict[str, PrecisionExport]:
    """Write the OpenVINO IR precisions of ``ungated`` (segments without head gate) into ``folder``.

    ``precisions`` as from `parse_precisions`; with only ``fp32`` nothing is written (the ONNX
    segments are the fp32 export). Returns the manifest's ``precisions`` entries.
    """
    if precisions == ["fp32"]:
        return {}
    import openvino as ov

    val_images, val_targets = split_images(run, "val")
    batches = [
        (torch.from_numpy(chunk), torch.zeros(len(chunk)))
        for chunk in np.array_split(val_images, -(-len(val_images) // 128))
    ]
    reference = loader_logits(run.model, batches)[0].numpy()  # [K, N, C]
    fp32 = [ov.convert_model(str(path)) for path in ungated]
    models = {"fp32": fp32}
    quantization = None
    if "int8" in precisions:
        calib, quantization = _calibration_set(run)
        models["int8"] = quantize(fp32, calib)
    out = {}
    for precision, segments in models.items():
        files = [_save(ov, model, folder / f"segment_{k}.{precision}.xml") for k, model in enumerate(segments)]
        export = _describe(run, precision, files, (val_images, val_targets), reference, max_accuracy_drop)
        if precision == "int8":
            export = export.model_copy(update={"quantization": quantization})
        out[precision_key(precision, "openvino")] = export
    return out


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
    val: tuple[np.ndarray, np.ndarray],
    reference: np.ndarray,
    max_accuracy_drop: float,
) -> PrecisionExport:
    """Parity and calibration of one precision from its own logits; ExportError beyond tolerance.
    ``val``: validation images [N, 3, H, W] and targets [N]; ``reference``: PyTorch's logits [K, N, C]."""
    val_images, val_targets = val
    xml = [x for x, _ in files]
    worst = parity_error(run.model, xml, run.preprocessing.size, chain=chained_openvino_logits)
    logits = chained_openvino_logits(xml, val_images)
    agreement = [float(a) for a in (logits.argmax(-1) == reference.argmax(-1)).mean(axis=1)]
    if precision == "fp32" and worst > FP32_TOLERANCE:
        raise ExportError(f"fp32 OpenVINO segments differ from PyTorch by {worst:.2e} (> {FP32_TOLERANCE:g})")
    accuracy = float((logits[-1].argmax(-1) == val_targets).mean())
    reference_accuracy = float((reference[-1].argmax(-1) == val_targets).mean())
    if precision == "int8" and accuracy < reference_accuracy - max_accuracy_drop:
        raise ExportError(
            f"int8 segments reach {accuracy:.1%} validation accuracy at the last exit, "
            f"PyTorch {reference_accuracy:.1%} (allowed drop {max_accuracy_drop:.1%}): "
            "raise --int8-max-accuracy-drop or serve fp32"
        )
    cal = calibrate(
        logits,
        val_targets,
        deployed_cumulative_gflops(run.model),
        early_heads_gflops(run.model),
        **recorded_resampling(run.config.train),
    )
    log.info("%s openvino: parity %.2e, argmax agreement %s", precision, worst, agreement)
    return PrecisionExport(
        precision=precision,  # type: ignore[arg-type]
        runtime="openvino",
        segments=[
            PrecisionSegment(index=k, file=x.name, sha256=sha256_file(x), weights=b.name, weights_sha256=sha256_file(b))
            for k, (x, b) in enumerate(files)
        ],
        calibration=Calibration.model_validate(cal["calibration"]),
        modes={name: ThresholdChoice.model_validate(mode) for name, mode in cal["modes"].items()},
        parity={
            "max_abs_diff": worst,
            "batch_sizes": list(PARITY_BATCH_SIZES),
            "tolerance": FP32_TOLERANCE if precision == "fp32" else None,
            "argmax_agreement": agreement,
            "argmax_split": "val",
            "val_accuracy_last_exit": accuracy,
            "pytorch_val_accuracy_last_exit": reference_accuracy,
            "max_accuracy_drop": max_accuracy_drop if precision == "int8" else None,
        },
    )


def _save(ov: Any, model: Any, xml: Path) -> tuple[Path, Path]:
    ov.save_model(model, str(xml), compress_to_fp16=False)  # fp16 weights would change fp32's numbers
    return xml, xml.with_suffix(".bin")


def split_images(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs float32 [N, 3, H, W] and targets [N] of the split the run recorded."""
    source = _source(run, split)
    return _images(run, source, range(len(source))), np.asarray(source.targets)


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
        "method": "nncf.quantize (OpenVINO, model_type=transformer: SmoothQuant, fast bias correction)",
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
