import base64
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dynadapter.contract import confidence, exit_indices
from dynadapter.contract.model_repository import ModelLoadError
from dynadapter.service.backends import onnxruntime as ort_backend
from dynadapter.service.backends.onnxruntime import CPU, CUDA, select_providers
from dynadapter.service.segment_runner import SegmentRunner
from tests.support.tiny_onnx_model import NUM_EXITS, TinyWeights, reference_exits, write_model_version


@pytest.fixture(scope="module")
def runner(model_repo: Path) -> SegmentRunner:
    folder = model_repo / "tiny" / "1"
    paths = [folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)]
    return SegmentRunner(paths, [CPU], intra_op_threads=1, num_classes=5)


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def bound_runner(model_repo: Path) -> SegmentRunner:
    """The IOBinding path (hidden states as OrtValues, compaction by the Gather model) on CPU."""
    folder = model_repo / "tiny" / "1"
    paths = [folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)]
    return SegmentRunner(paths, [CPU], intra_op_threads=1, io_binding=True)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("path", ["host", "bound"])
def test_matches_numpy_reference(
    runner: SegmentRunner, bound_runner: SegmentRunner, weights: TinyWeights, threshold: float, path: str
) -> None:
    runner = bound_runner if path == "bound" else runner
    batch = images(64)
    thresholds = np.full((64, NUM_EXITS - 1), threshold)
    output = runner.run(batch, thresholds)
    expected = reference_exits(weights, batch, thresholds)
    assert [r.exit_index for r in output.results] == [k for k, _ in expected]
    for result, (_, logits) in zip(output.results, expected, strict=True):
        np.testing.assert_allclose(result.logits, logits, atol=1e-5)


def test_images_spread_over_exits(runner: SegmentRunner) -> None:
    exits = [r.exit_index for r in runner.run(images(64), np.full(64, 0.6)).results]
    assert set(exits) == set(range(NUM_EXITS))


def test_threshold_zero_leaves_at_first_exit_and_one_runs_to_the_end(runner: SegmentRunner) -> None:
    batch = images(16)
    assert {r.exit_index for r in runner.run(batch, np.zeros(16)).results} == {0}
    full = runner.run(batch, np.ones(16))
    assert {r.exit_index for r in full.results} == {NUM_EXITS - 1}
    assert len(full.stage_seconds) == NUM_EXITS


def test_threshold_one_never_leaves_even_when_an_exit_is_certain(tmp_path: Path) -> None:
    # Huge head weights: float32 softmax rounds the confidence to exactly 1.0 at every exit.
    weights = TinyWeights.random(seed=0)
    for w, _ in weights.heads:
        w *= 1e4
    folder = write_model_version(tmp_path, weights)
    runner = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU])
    output = runner.run(images(4), np.ones(4))
    assert max(confidence(r.logits) for r in output.results) == 1.0
    assert {r.exit_index for r in output.results} == {NUM_EXITS - 1}


@pytest.mark.parametrize("path", ["host", "bound"])
def test_batch_equals_single_images_with_mixed_thresholds(
    runner: SegmentRunner, bound_runner: SegmentRunner, path: str
) -> None:
    runner = bound_runner if path == "bound" else runner
    batch = images(24, seed=7)
    rng = np.random.default_rng(3)
    thresholds = rng.choice([0.0, 0.3, 0.6, 0.9, 1.0], size=(24, NUM_EXITS - 1))
    together = runner.run(batch, thresholds).results
    assert len({r.exit_index for r in together}) > 1
    for i in range(24):
        alone = runner.run(batch[i : i + 1], thresholds[i : i + 1]).results[0]
        assert alone.exit_index == together[i].exit_index
        assert np.argmax(alone.logits) == np.argmax(together[i].logits)
        np.testing.assert_allclose(alone.logits, together[i].logits, atol=1e-5)


@pytest.mark.parametrize("path", ["host", "bound"])
def test_gated_heads_are_skipped_only_where_no_image_can_leave(
    runner: SegmentRunner, bound_runner: SegmentRunner, weights: TinyWeights, path: str
) -> None:
    runner = bound_runner if path == "bound" else runner
    batch = images(8, seed=5)
    last = weights.forward_all(batch)[-1]
    full_depth = runner.run(batch, np.ones(8)).results  # nobody can leave early: no early head runs
    assert {r.exit_index for r in full_depth} == {NUM_EXITS - 1}
    assert {r.skipped_heads for r in full_depth} == {tuple(range(NUM_EXITS - 1))}
    for result, expected in zip(full_depth, last, strict=True):
        np.testing.assert_allclose(result.logits, expected, atol=1e-5)
    # Exit 1 only: exit 0's head is skipped, exit 1's runs for the whole batch.
    only_exit_1 = np.tile([1.0, 0.0], (8, 1))
    assert {(r.exit_index, r.skipped_heads) for r in runner.run(batch, only_exit_1).results} == {(1, (0,))}
    # One image that may leave anywhere makes every head run for the batch.
    mixed = np.ones((8, NUM_EXITS - 1))
    mixed[3] = 0.6
    assert {r.skipped_heads for r in runner.run(batch, mixed).results} == {()}


def test_an_ungated_model_runs_every_head_and_reports_none_skipped(tmp_path: Path, weights: TinyWeights) -> None:
    folder = write_model_version(tmp_path, weights, gated=False)
    legacy = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU])
    batch = images(6, seed=9)
    results = legacy.run(batch, np.ones(6)).results
    assert {(r.exit_index, r.skipped_heads) for r in results} == {(NUM_EXITS - 1, ())}
    for result, expected in zip(results, weights.forward_all(batch)[-1], strict=True):
        np.testing.assert_allclose(result.logits, expected, atol=1e-5)


def test_stages_run_only_while_images_remain(runner: SegmentRunner) -> None:
    assert len(runner.run(images(8), np.zeros(8)).stage_seconds) == 1


def test_cascade_hands_out_each_stage_leavers_as_they_leave(runner: SegmentRunner) -> None:
    stages = list(runner.cascade(images(64), np.full(64, 0.6)))
    assert [stage.stage for stage in stages] == list(range(NUM_EXITS))
    in_flight = 64
    for stage in stages:
        assert stage.rows == in_flight  # each segment ran only on the images still in flight
        assert {result.exit_index for result in stage.exits.values()} <= {stage.stage}
        in_flight -= len(stage.exits)
    assert in_flight == 0
    positions = [position for stage in stages for position in stage.exits]
    assert sorted(positions) == list(range(64))  # every image answered exactly once


def test_rejects_thresholds_of_the_wrong_shape(runner: SegmentRunner) -> None:
    with pytest.raises(ValueError, match="thresholds must be"):
        runner.run(images(2), np.zeros((2, 5)))


def test_warm_up_runs_every_path(runner: SegmentRunner) -> None:
    runner.warm_up((8, 8), [1, 4])  # must not raise, including the compaction path


def test_segment_with_wrong_outputs_is_refused(model_repo: Path) -> None:
    last = model_repo / "tiny" / "1" / f"segment_{NUM_EXITS - 1}.onnx"
    expected = "expected one input \\(besides need_logits\\) and outputs \\['hidden', 'logits'\\]"
    with pytest.raises(ModelLoadError, match=expected):
        SegmentRunner([last, last], [CPU])


def test_class_count_must_match_labels(model_repo: Path) -> None:
    paths = [model_repo / "tiny" / "1" / f"segment_{k}.onnx" for k in range(NUM_EXITS)]
    with pytest.raises(ModelLoadError, match="logits have 5 classes, the manifest has 7 labels"):
        SegmentRunner(paths, [CPU], num_classes=7)


def test_cpu_is_chosen_without_a_usable_gpu(capfd: pytest.CaptureFixture[str]) -> None:
    # onnxruntime-gpu lists CUDA here although no GPU exists; the probe must see through it, quietly.
    assert select_providers("cpu") == [CPU]
    if not ort_backend.cuda_usable():
        assert select_providers("auto") == [CPU]
        with pytest.raises(ModelLoadError, match="no usable CUDA GPU"):
            select_providers("cuda")
        assert "CUDAExecutionProvider" not in capfd.readouterr().err


def test_cuda_library_preload_speaks_to_the_log_not_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ort_backend.ort, "preload_dlls", lambda: print("Failed to load libcudart.so.13"), raising=False)
    ort_backend.preload_cuda_libraries.cache_clear()
    try:
        with caplog.at_level("INFO", logger="dynadapter.service.backends.onnxruntime"):
            ort_backend.preload_cuda_libraries()
    finally:
        ort_backend.preload_cuda_libraries.cache_clear()
    assert capsys.readouterr().out == ""
    assert "preload_dlls: Failed to load libcudart.so.13" in caplog.text


@pytest.mark.gpu
def test_cuda_gives_the_exits_and_logits_of_cpu(model_repo: Path, runner: SegmentRunner, weights: TinyWeights) -> None:
    if not ort_backend.cuda_usable():
        pytest.skip("no usable CUDA execution provider (no GPU, driver or CUDA libraries here)")
    folder = model_repo / "tiny" / "1"
    cuda = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], select_providers("auto"))
    assert cuda.providers[0] == CUDA  # and so hidden states stay on the GPU (IOBinding) between segments
    batch, threshold = images(256, seed=11), 0.6
    # CUDA may use TF32 matmuls: compare exits only for images not within a hair of the threshold.
    confidences = np.stack([confidence(logits) for logits in weights.forward_all(batch)[:-1]], axis=1)
    clear = (np.abs(confidences - threshold) > 0.01).all(axis=1)
    assert clear.sum() > 128
    thresholds = np.full(int(clear.sum()), threshold)
    on_gpu, on_cpu = cuda.run(batch[clear], thresholds), runner.run(batch[clear], thresholds)
    assert len({result.exit_index for result in on_cpu.results}) == NUM_EXITS
    for gpu, cpu in zip(on_gpu.results, on_cpu.results, strict=True):
        assert gpu.exit_index == cpu.exit_index
        np.testing.assert_allclose(gpu.logits, cpu.logits, atol=2e-3)


def test_embedded_gather_model_is_what_onnx_helper_builds() -> None:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["hidden", "indices"], ["kept"], axis=0)],
        "gather_rows",
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["rows", "tokens", "dim"]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["kept_rows"]),
        ],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["kept_rows", "tokens", "dim"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="dyn-adapter"
    )
    onnx.checker.check_model(model, full_check=True)
    assert ort_backend.GATHER_ROWS_ONNX == model.SerializeToString()
    assert base64.b64encode(model.SerializeToString())  # readable back, as the module stores it


def test_a_cancelled_image_runs_no_further_segment(runner: SegmentRunner) -> None:
    """Flags set while the cascade runs (another thread, a client gone) drop those rows before the next segment."""
    batch = images(4)
    cancelled = np.zeros(4, dtype=bool)
    stages = runner.cascade(batch, np.ones((4, NUM_EXITS - 1)), cancelled=cancelled)  # nobody leaves early
    first = next(stages)
    assert first.rows == 4 and first.exits == {}
    cancelled[[1, 3]] = True
    rest = list(stages)
    assert [stage.rows for stage in rest] == [2] * (NUM_EXITS - 1)
    assert sorted(rest[-1].exits) == [0, 2]
    flags = np.zeros(4, dtype=bool)
    stages = runner.cascade(batch, np.ones((4, NUM_EXITS - 1)), cancelled=flags)
    next(stages)
    flags[:] = True  # every image gone after the first segment: the cascade stops there
    assert list(stages) == []


class GivenLogits:
    """A backend whose exits say given logits [K, B, C]: its hidden state is the rows' input positions."""

    name = "onnxruntime"
    providers = [CPU]
    device = "cpu"

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.num_segments = len(logits)

    def gated(self, k: int) -> bool:
        return k < self.num_segments - 1

    def run(self, k: int, x: np.ndarray, need_logits: bool) -> tuple[np.ndarray | None, np.ndarray]:
        rows = np.arange(len(x)) if k == 0 else x
        logits = self.logits[k, rows] if need_logits else np.zeros((0, self.logits.shape[2]), np.float32)
        return (rows if k < self.num_segments - 1 else None), logits

    def keep(self, hidden: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return hidden[rows]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cascade_takes_the_exits_of_the_contracts_exit_rule(model_repo: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch, classes = 256, 5
    logits = (rng.normal(0, 1, (NUM_EXITS, batch, classes)) * rng.uniform(0.1, 6, (NUM_EXITS, batch, 1))).astype(
        np.float32
    )
    logits[:, :8] = np.eye(classes, dtype=np.float32)[0] * 1e4  # confidence exactly 1.0 everywhere
    thresholds = rng.uniform(0.2, 1.1, (batch, NUM_EXITS - 1))
    thresholds[:16] = 1.0  # never leave early, even at confidence 1.0
    folder = model_repo / "tiny" / "1"
    runner = SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU])
    runner.backend = GivenLogits(logits)
    results = runner.run(np.zeros((batch, 3, 8, 8), np.float32), thresholds).results
    expected = exit_indices(confidence(logits), thresholds.T)
    assert [r.exit_index for r in results] == expected.tolist()
    assert len(set(expected.tolist())) == NUM_EXITS  # every exit taken: the comparison covers each
    assert {r.exit_index for r in results[:16]} == {NUM_EXITS - 1}
    for position, result in enumerate(results):
        np.testing.assert_array_equal(result.logits, logits[result.exit_index, position])
