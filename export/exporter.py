"""Export: cut the trained model into per-stage ONNX segments plus a manifest (docs/model-repository.md).

Mergeable PETL layers (RepAdapter, LoRA) are folded into the frozen weights first, so they cost
nothing at inference. Every segment but the last gets a gated exit head (export/head_gate.py),
so that the server can skip a head no image can use. Each segment is checked with
``onnx.checker`` (full check), and the chained segments are run with onnxruntime against the
*unmerged* PyTorch model (export/parity.py): that one parity number covers the merge and the export, is stored in
the manifest, and a model over tolerance is refused.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from dynadapter.contract import (
    SCHEMA_VERSION,
    Manifest,
    Segment,
    new_manifest,
    segment_io,
    sha256_file,
    write_manifest,
)
from dynadapter.export.head_gate import gate_exit_head
from dynadapter.export.int8_gate import INT8_MAX_ACCURACY_DROP
from dynadapter.export.parity import PARITY_TOLERANCE, Parity, parity_error
from dynadapter.export.precisions import openvino_precisions
from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.models.flops import deployed_cumulative_gflops, exit_head_gflops
from dynadapter.models.petl import merge_all
from dynadapter.training.run_dir import Run, load_run, read_calibration

log = logging.getLogger(__name__)

#: Bumped when the exported graphs change for the same checkpoint (2: gated exit heads; 3: int8 judged
#: at every exit and mode, accuracy control where plain PTQ fails), so that cached exports
#: (``dynadapter demo build``) are redone.
EXPORTER_REVISION = 3
OPSET = 18


class SegmentModule(nn.Module):
    """Stage k and exit head k as one graph: image or hidden -> (hidden, logits), logits on the last."""

    def __init__(self, model: DynamicViT, k: int) -> None:
        super().__init__()
        self.model, self.k = model, k
        self.last = k == model.num_exits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        hidden, logits = self.model.forward_stage(self.k, x)
        return logits if self.last else (hidden, logits)


def export_segment(
    model: DynamicViT, k: int, example: torch.Tensor, path: Path, ungated: Path | None = None
) -> torch.Tensor:
    """Write segment k to ``path`` (and, given ``ungated``, the segment before its head gate there: the
    source of the OpenVINO precisions); returns its hidden output for the next segment's example."""
    seg = SegmentModule(model, k).eval()
    inputs, outputs = segment_io(k, seg.last)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The torch.export-based exporter (the maintained one); the batch axis stays dynamic.
    torch.onnx.export(
        seg,
        (example,),
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
        external_data=False,
    )
    graph = onnx.load(str(path))
    if ungated is not None:
        shutil.copyfile(path, ungated)
    if not seg.last:
        graph = gate_exit_head(graph)
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph, full_check=True)
    with torch.no_grad():
        return model.forward_stage(k, example)[0]


def export_run(
    run_dir: Path,
    model_repo: Path,
    name: str = "model",
    version: str = "1",
    precisions: Sequence[str] = ("fp32",),
    int8_max_accuracy_drop: float = INT8_MAX_ACCURACY_DROP,
    int8_method: str = "auto",
    int8_required: bool = True,
) -> Path:
    """Export a run directory to ``model_repo/name/version``; returns that folder.

    ``precisions``: "fp32" (the ONNX segments, always written) and optionally "int8"; any precision
    besides fp32 also writes the OpenVINO IR ones (export/precisions.py, which needs openvino and nncf).
    int8 is quantized by ``int8_method`` and let out only where its validation accuracy is at most
    ``int8_max_accuracy_drop`` below fp32's at every exit and mode (export/int8_gate.py); where it is not,
    ``ExportError`` with ``int8_required``, else the version is written without int8 (a warning says so).
    ``ExportError`` too where the segments' logits differ from PyTorch's beyond ``PARITY_TOLERANCE`` times
    each exit's logit scale (export/parity.py, `Parity`).
    """
    run = load_run(Path(run_dir))
    calibration = read_calibration(Path(run_dir))
    dest = Path(model_repo) / name / str(version)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    extra = list(precisions) != ["fp32"]
    ungated = tmp / ".ungated"
    paths = write_segments(run.model, run.preprocessing.size, tmp, ungated if extra else None)
    log.info("checking the segments' parity against PyTorch")
    parity = parity_error(run.model, paths, run.preprocessing.size)
    parity.check(PARITY_TOLERANCE, "exported segments")
    manifest = build_manifest(run, paths, calibration, parity, name, str(version))
    if extra:
        log.info("converting to OpenVINO IR: %s (int8: NNCF calibration and its accuracy gate)", ", ".join(precisions))
        sources = [ungated / p.name for p in paths]
        ir = openvino_precisions(
            run, sources, tmp, list(precisions), int8_max_accuracy_drop, int8_method, int8_required
        )
        shutil.rmtree(ungated)
        manifest = new_manifest(**{**dict(manifest), "precisions": ir})
    write_manifest(manifest, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # a half-written version never appears under its real name
    log.info("exported %s (%d segments)", dest, len(paths))
    return dest


def write_segments(model: DynamicViT, size: tuple[int, int], folder: Path, ungated: Path | None = None) -> list[Path]:
    """The ONNX segments, PETL merged; with ``ungated``, copies without head gate go into that folder."""
    merged = copy.deepcopy(model).eval()
    merge_all(merged)
    x = torch.randn(2, 3, *size)
    paths = []
    if ungated is not None:
        ungated.mkdir()
    for k in range(merged.num_exits):
        log.info("exporting ONNX segment %d of %d (torch.export)", k + 1, merged.num_exits)
        paths.append(folder / f"segment_{k}.onnx")
        x = export_segment(merged, k, x, paths[-1], ungated / paths[-1].name if ungated is not None else None)
    return paths


def build_manifest(
    run: Run, paths: list[Path], calibration: dict[str, Any], parity: Parity, name: str, version: str
) -> Manifest:
    cum = deployed_cumulative_gflops(run.model)
    per = [c - p for c, p in zip(cum, [0.0, *cum[:-1]], strict=True)]
    heads = exit_head_gflops(run.model)
    with torch.no_grad():
        hidden, _ = run.model.forward_stage(0, torch.zeros(1, 3, *run.preprocessing.size))
    exits = run.model.config.exits
    return new_manifest(
        schema_version=SCHEMA_VERSION,
        name=name,
        version=version,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        labels=run.labels,
        preprocessing=run.preprocessing,
        hidden_shape=tuple(hidden.shape[1:]),
        segments=[
            Segment(
                index=k,
                file=p.name,
                sha256=sha256_file(p),
                after_block=exits[k],
                gflops=per[k],
                cumulative_gflops=cum[k],
                head_gflops=heads[k],
            )
            for k, p in enumerate(paths)
        ],
        gflops_full=cum[-1],
        calibration=calibration["calibration"],
        modes=calibration["modes"],
        parity=parity.record(PARITY_TOLERANCE),
        training={
            "backbone": run.config.backbone.name,
            "petl": run.model.config.petl,
            "img_size": run.preprocessing.size[0],
            "exits": exits,
            "data": run.config.data,
        },
    )
