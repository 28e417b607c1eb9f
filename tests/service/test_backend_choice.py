"""Which backend and precision serve (settings backend, precision; README "Serving on a CPU")."""

from pathlib import Path

import numpy as np
import pytest

from dynadapter.contract.model_repository import ModelLoadError, load_model
from dynadapter.service.backends.choice import choose, open_runner
from dynadapter.service.backends.openvino import int8_accelerated
from dynadapter.service.segment_runner import SegmentRunner
from dynadapter.service.settings import Settings
from tests.support.tiny_onnx_model import NUM_EXITS, OPENVINO, TinyWeights, reference_exits

ALL = ["fp32-onnx", "fp32-openvino", "int8-openvino"]


def settings(**values: object) -> Settings:
    return Settings(**{"providers": "auto", **values})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "offered", "gpu", "openvino", "expected"),
    [
        ({}, ALL, True, True, ("onnxruntime", "fp32-onnx")),  # a usable GPU: CUDA onnxruntime
        ({}, ALL, False, True, ("openvino", "int8-openvino")),  # CPU: the fastest precision present
        ({}, ALL[:2], False, True, ("openvino", "fp32-openvino")),
        ({}, ALL, False, False, ("onnxruntime", "fp32-onnx")),  # no openvino installed
        ({}, ["fp32-onnx"], False, True, ("onnxruntime", "fp32-onnx")),  # an older export
        ({"precision": "fp32"}, ALL, False, True, ("openvino", "fp32-openvino")),
        ({"backend": "onnxruntime"}, ALL, False, True, ("onnxruntime", "fp32-onnx")),
        ({"backend": "openvino", "precision": "fp32"}, ALL, False, True, ("openvino", "fp32-openvino")),
        ({"providers": "cpu"}, ALL, False, True, ("openvino", "int8-openvino")),
    ],
)
def test_choice(values: dict, offered: list[str], gpu: bool, openvino: bool, expected: tuple[str, str]) -> None:
    choice = choose(settings(**values), offered, gpu, openvino)
    assert (choice.backend, choice.precision_key) == expected


def test_without_int8_instructions_auto_prefers_fp32_but_int8_can_be_forced() -> None:
    auto = choose(settings(), ALL, False, True, int8_fast=False)
    assert (auto.backend, auto.precision_key) == ("openvino", "fp32-openvino")
    forced = choose(settings(precision="int8"), ALL, False, True, int8_fast=False)
    assert forced.precision_key == "int8-openvino"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx2 fma avx512f avx512_vnni", True), ("fpu avx2 fma avx_vnni", True), ("fpu avx2 fma", False)],
)
def test_int8_acceleration_is_read_from_the_cpu_flags(flags: str, expected: bool) -> None:
    assert int8_accelerated(f"processor\t: 0\nflags\t\t: {flags}\n") is expected


@pytest.mark.parametrize(
    ("values", "offered", "openvino", "message"),
    [
        ({"precision": "int8"}, ["fp32-onnx"], True, "no int8-openvino segments"),
        ({"backend": "openvino"}, ["fp32-onnx"], True, "no fp32-openvino segments"),
        ({"backend": "openvino"}, ALL, False, "openvino package is not installed"),
        ({"backend": "onnxruntime", "precision": "int8"}, ALL, True, "onnxruntime serves fp32"),
        ({"backend": "openvino", "providers": "cuda"}, ALL, True, "needs backend onnxruntime"),
    ],
)
def test_impossible_choices_refuse_to_start(values: dict, offered: list[str], openvino: bool, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        choose(settings(**values), offered, False, openvino)


def test_older_manifest_loads_at_fp32_and_refuses_a_missing_precision(model_repo: Path) -> None:
    assert load_model(model_repo).precision == "fp32-onnx"
    with pytest.raises(ModelLoadError, match="has no int8-openvino segments"):
        load_model(model_repo, precision="int8-openvino")


@pytest.mark.skipif(not OPENVINO, reason="openvino is not installed")
def test_openvino_runner_matches_reference_and_skips_heads(model_repo: Path, weights: TinyWeights) -> None:
    model, runner = open_runner(Settings(model_repo=model_repo, backend="openvino", providers="cpu"), "tiny", "1")
    assert (model.precision, runner.backend.name) == ("fp32-openvino", "openvino")
    batch = np.random.default_rng(3).normal(0, 1, (32, 3, 8, 8)).astype(np.float32)
    thresholds = np.full((32, NUM_EXITS - 1), 0.6)
    expected = reference_exits(weights, batch, thresholds)
    results = runner.run(batch, thresholds).results
    assert [r.exit_index for r in results] == [k for k, _ in expected]
    for result, (_, logits) in zip(results, expected, strict=True):
        np.testing.assert_allclose(result.logits, logits, atol=1e-5)
    full = runner.run(batch, np.ones(32)).results  # threshold 1: no early head runs
    assert {r.skipped_heads for r in full} == {tuple(range(NUM_EXITS - 1))}


@pytest.mark.skipif(not OPENVINO, reason="openvino is not installed")
def test_openvino_segment_that_is_not_ir_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "segment_0.fp32.xml"
    bad.write_text("<net>not a model</net>")
    with pytest.raises(ModelLoadError, match="OpenVINO cannot load segment"):
        SegmentRunner([bad], backend="openvino")
