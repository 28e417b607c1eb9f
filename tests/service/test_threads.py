"""Runtime threads by default: the cores this process may use (dynadapter.cpu.usable_cpus), never the
host's, and onnxruntime's idle threads sleep rather than spin (docs/configuration.md, intra_op_threads,
allow_spinning).

`usable_cpus` is replaced by a count other than the runtime's own default would give, so that the default
cannot pass for it: 5 for onnxruntime (its options hold what was set, 0 for its own default), 2 for OpenVINO
(which caps threads at the cores there are).
"""

from pathlib import Path

import pytest

from dynadapter.service.backends import base
from dynadapter.service.backends import openvino as ov_backend
from dynadapter.service.backends.onnxruntime import OnnxRuntimeBackend
from tests.support.tiny_onnx_model import NUM_EXITS, OPENVINO

CORES = 5


@pytest.fixture
def five_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "usable_cpus", lambda: CORES)


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "usable_cpus", lambda: 2)


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (3, 3), (16, 16)])
def test_the_default_is_the_usable_cores(monkeypatch: pytest.MonkeyPatch, cores: int, threads: int) -> None:
    monkeypatch.setattr(base, "usable_cpus", lambda: cores)
    assert base.default_threads() == threads


def onnx_segments(model_repo: Path) -> list[Path]:
    return [model_repo / "tiny" / "1" / f"segment_{k}.onnx" for k in range(NUM_EXITS)]


def test_onnxruntime_defaults_to_the_usable_cores_without_spinning(model_repo: Path, five_cores: None) -> None:
    backend = OnnxRuntimeBackend(onnx_segments(model_repo))
    for segment in backend._segments:
        options = segment.session.get_session_options()
        assert options.intra_op_num_threads == CORES
        assert options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_onnxruntime_takes_the_threads_and_spinning_it_is_given(model_repo: Path, five_cores: None) -> None:
    backend = OnnxRuntimeBackend(onnx_segments(model_repo), intra_op_threads=2, allow_spinning=True)
    options = backend._segments[0].session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.skipif(not OPENVINO, reason="openvino is not installed")
# The default is usable_cpus (2 here: this machine has at least 2 cores), and a count given is taken as it is.
@pytest.mark.parametrize(("threads", "expected"), [(0, 2), (1, 1)])
def test_openvino_runs_one_stream_on_the_usable_cores(
    model_repo: Path, two_cores: None, threads: int, expected: int
) -> None:
    paths = [model_repo / "tiny" / "1" / f"segment_{k}.fp32.xml" for k in range(NUM_EXITS)]
    for segment in ov_backend.open_segments(paths, threads):
        for compiled in (segment.full, segment.trunk) if segment.trunk is not None else (segment.full,):
            assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == expected
            assert int(compiled.get_property("NUM_STREAMS")) == 1
