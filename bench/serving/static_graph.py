"""The baseline the serving bench compares against: the same trained model as one static graph.

Full depth, last exit only: the frozen backbone, its PETL layers and the last exit head, with no
early exit and no early heads. It is written as a *static run directory* (what ``dynadapter train
--static`` writes: one exit after the last block) holding the dynamic run's own weights, so that
everything else is the project's usual path: ``load_run`` rebuilds it in PyTorch, ``export_run``
turns it into a valid one-segment model repository (parity-checked, calibrated, with a manifest)
that ``dynadapter serve`` serves unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from dynadapter.export.exporter import export_run
from dynadapter.models.flops import deployed_cumulative_gflops
from dynadapter.training import run_dir as rd
from dynadapter.training.calibration import calibrate
from dynadapter.training.evaluate import split_logits


def static_config(config: rd.RunConfig) -> rd.RunConfig:
    """A run's config.json with the exits cut down to the last one (and its head)."""
    model = config.model
    return config.model_copy(update={"model": replace(model, exits=model.exits[-1:], heads=model.heads[-1:])})


def static_checkpoint(checkpoint: dict[str, Any], num_exits: int) -> dict[str, Any]:
    """Keep the PETL parameters and the last head's, renamed from ``heads.<K-1>.`` to ``heads.0.``."""
    last = f"heads.{num_exits - 1}."
    kept = {name: tensor for name, tensor in checkpoint.items() if not name.startswith("heads.")}
    kept |= {"heads.0." + name.removeprefix(last): t for name, t in checkpoint.items() if name.startswith(last)}
    return kept


def write_static_run(run_dir: Path, out: Path) -> Path:
    """Write ``out`` as a static (one-exit) run directory with ``run_dir``'s weights, calibrated on its val split."""
    config = rd.read_config(run_dir)
    shutil.rmtree(out, ignore_errors=True)
    rd.write_config(out, static_config(config))
    rd.write_checkpoint(out, static_checkpoint(rd.read_checkpoint(run_dir), len(config.model.exits)))
    # One exit: the calibration table has a single operating point (full depth), which every mode names.
    run = rd.load_run(out)
    logits, targets = split_logits(run, None, "val")
    rd.write_calibration(out, calibrate(logits.numpy(), targets.numpy(), deployed_cumulative_gflops(run.model)))
    return out


def export_static_graph(
    run_dir: Path, work_dir: Path, name: str, precisions: tuple[str, ...] = ("fp32",)
) -> tuple[Path, Path]:
    """The static run directory and its one-segment model repository, both under ``work_dir``; ``precisions``
    as ``export_run``'s (("fp32", "int8") adds the OpenVINO IR fp32 and NNCF int8 the Triton peer serves)."""
    static_run = write_static_run(Path(run_dir), work_dir / "static_run")
    repo = work_dir / "static_repo"
    export_run(static_run, repo, name=name, version="1", precisions=precisions)
    return static_run, repo
