"""The accuracy suite's int8 column: a Dyn-Adapter cell as it would be served in int8 on a CPU.

Each dynamic cell's run directory is exported as ``dynadapter export --precision int8`` exports it
(export/precisions.py: OpenVINO IR, NNCF post-training int8 on 64 train images, the int8 precision's
own calibration and modes chosen on its own logits over the run's calibration set: validation images,
and the ``--calibration-corrupted`` copies where the cell has them), and its test split is then classified
by the service's own segment runner on the OpenVINO backend, at each mode's int8 thresholds. So the
column is what a server would answer, exits, skipped heads and FLOPs included, not a re-computation.

The fp32 OpenVINO IR of the same export is classified the same way: its numbers must equal the cell's
PyTorch-evaluated modes (the IR matches PyTorch within the parity bound, and its thresholds are chosen on
the same calibration set as the cell's own), which checks this path end to end.

The export is ``dynadapter export``'s default: plain PTQ, then NNCF's accuracy control where plain PTQ
fails the int8 gate (export/int8_gate.py: validation accuracy within ``INT8_MAX_ACCURACY_DROP`` of fp32's at
every exit and mode). Where even accuracy control fails it, the cell is exported again allowing any drop
(plain PTQ), so that the column still shows the number, and ``accepted`` is false.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from statistics import fmean
from typing import Any, cast

import numpy as np

from dynadapter.contract import ModelVersion, load_model, precision_key, read_manifest
from dynadapter.export.exporter import export_run
from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP
from dynadapter.export.precisions import split_images
from dynadapter.service.exit_policy import ExitPolicy
from dynadapter.service.segment_runner import SegmentRunner
from dynadapter.training.run_dir import load_run

#: Images per runner call (the service batches at most 16 by default; the answers do not depend on it).
BATCH = 64


def int8_result(run_dir: Path, reference_gflops: float) -> dict[str, Any]:
    """The int8 column of one dynamic cell, and the fp32-IR check beside it.

    Returns ``{"modes": {mode: {threshold, acc, gflops, saved}}, "fp32_openvino": {the same}, "val_acc",
    "pytorch_val_acc", "argmax_agreement": [per exit, on val], "val_acc_drop", "val_acc_drop_at", "method",
    "allowed_drop", "accepted": bool, "test_acc_drop_points": {mode: points}, "seconds"}`` (the int8 gate's
    worst validation accuracy drop against fp32 over every exit and mode and where, how int8 was quantized,
    the export's default bound, whether the export let it out, each mode's test accuracy drop, wall time);
    accuracies are fractions of the test split, GFLOPs per image (one multiply-add = one FLOP), ``saved`` against
    ``reference_gflops`` (the static baseline's). Raises ``ExportError`` where the export fails.
    """
    start = time.perf_counter()
    run = load_run(run_dir)
    images, targets = split_images(run, "test")
    with tempfile.TemporaryDirectory(prefix="int8-cell-") as tmp:
        folder = export_run(Path(run_dir), Path(tmp), "cell", "1", ["fp32", "int8"], int8_required=False)
        key = precision_key("int8", "openvino")
        accepted = key in (read_manifest(folder / "manifest.json").precisions or {})
        if not accepted:  # refused by the gate: show plain PTQ's numbers
            export_run(Path(run_dir), Path(tmp), "cell", "1", ["fp32", "int8"], 1.0, "ptq", True)
        models = {p: load_model(Path(tmp), "cell", "1", precision_key(p, "openvino")) for p in ("int8", "fp32")}
        served = {p: served_modes(model, images, targets, reference_gflops) for p, model in models.items()}
    parity = models["int8"].manifest.parity
    gate = cast(dict[str, Any], parity["gate"])  # every int8 export records its gate
    return {
        "modes": served["int8"],
        "fp32_openvino": served["fp32"],
        "val_acc": parity["val_accuracy_last_exit"],
        "pytorch_val_acc": parity["pytorch_val_accuracy_last_exit"],
        "argmax_agreement": parity["argmax_agreement"],
        # the gate's worst validation accuracy drop against fp32 over every exit and mode, and where
        "val_acc_drop": -float(gate["worst"]),
        "val_acc_drop_at": gate["worst_at"],
        "method": gate["method"],
        "allowed_drop": INT8_MAX_ACCURACY_DROP,
        "accepted": accepted,
        # test accuracy lost against fp32 OpenVINO in each mode (each at its own thresholds), in points
        "test_acc_drop_points": {
            m: 100 * (served["fp32"][m]["acc"] - served["int8"][m]["acc"]) for m in served["fp32"]
        },
        "seconds": round(time.perf_counter() - start, 1),
    }


def served_modes(
    model: ModelVersion, images: np.ndarray, targets: np.ndarray, reference_gflops: float
) -> dict[str, dict[str, float]]:
    """Every mode of an exported OpenVINO IR precision, run by the service's segment runner on
    ``images`` float32 [N, 3, H, W]: its thresholds, accuracy on ``targets`` [N] and mean GFLOPs."""
    manifest = model.manifest
    runner = SegmentRunner(model.segment_paths, backend="openvino", num_classes=manifest.num_classes)
    out = {}
    for name, choice in manifest.modes.items():
        thresholds = ExitPolicy.from_choice(choice, manifest.num_exits).as_array()
        results = [
            result
            for batch in np.array_split(images, range(BATCH, len(images), BATCH))
            for result in runner.run(batch, np.broadcast_to(thresholds, (len(batch), len(thresholds)))).results
        ]
        correct = [int(r.logits.argmax()) == int(t) for r, t in zip(results, targets, strict=True)]
        gflops = fmean(manifest.used_gflops(r.exit_index, r.skipped_heads) for r in results)
        out[name] = {
            "threshold": choice.threshold,
            "acc": fmean(correct),
            "gflops": gflops,
            "saved": 1.0 - gflops / reference_gflops,
        }
    return out
