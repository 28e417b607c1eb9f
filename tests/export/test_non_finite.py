"""A broken (non-finite) model never ships: export refuses it, and the service refuses to warm it up."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from dynadapter.contract import ModelLoadError
from dynadapter.errors import ExportError
from dynadapter.export.exporter import export_run
from dynadapter.service.segment_runner import SegmentRunner
from tests.support.tiny import train_tiny_run
from tests.support.tiny_onnx_model import NUM_EXITS, TinyWeights, write_model_version


def test_export_refuses_nan_logits_instead_of_reporting_parity_zero(tmp_path: Path) -> None:
    run = train_tiny_run(tmp_path / "run", epochs=1)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    state = load_file(str(broken / "checkpoint.safetensors"))
    head = next(k for k in state if k.startswith("heads.1") and k.endswith("weight"))
    state[head][0, 0] = float("nan")
    save_file(state, str(broken / "checkpoint.safetensors"))
    with pytest.raises(ExportError, match=r"exit 1 gives non-finite logits \(PyTorch\).*retrain with a lower --lr"):
        export_run(broken, tmp_path / "repo")
    assert not (tmp_path / "repo" / "model" / "1").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_service_refuses_a_model_whose_warm_up_logits_are_not_finite(tmp_path: Path, value: float) -> None:
    weights = TinyWeights.random(seed=0)
    weights.heads[2][1][3] = value  # the last exit's bias: every image's logits
    folder = write_model_version(tmp_path, weights)
    runner = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="exit 2 gives non-finite logits on the warm-up images"):
        runner.warm_up((8, 8), [1, 4])


def test_a_finite_model_warms_up(tmp_path: Path) -> None:
    folder = write_model_version(tmp_path, TinyWeights.random(seed=0))
    runner = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], ["CPUExecutionProvider"])
    runner.warm_up((8, 8), [1, 4])
    assert np.isfinite(runner.run(np.zeros((2, 3, 8, 8), np.float32), np.ones(2)).results[0].logits).all()
