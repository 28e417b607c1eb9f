import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from service.batching import BatcherClosedError, MicroBatcher, QueueFullError
from service.segment_runner import CPU, RunOutput, SegmentRunner
from tests.service.tiny_onnx_model import NUM_EXITS


@pytest.fixture(scope="module")
def runner(model_repo: Path) -> SegmentRunner:
    folder = model_repo / "tiny" / "1"
    return SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU], intra_op_threads=1)


def test_concurrent_requests_share_batches_and_keep_their_own_thresholds(runner: SegmentRunner) -> None:
    images = np.random.default_rng(5).normal(0, 1, (32, 3, 8, 8)).astype(np.float32)
    thresholds = np.random.default_rng(6).choice([0.0, 0.5, 0.8, 1.0], size=(32, NUM_EXITS - 1))
    batches: list[RunOutput] = []

    async def scenario() -> list:
        batcher = MicroBatcher(runner, max_batch_size=8, max_wait_s=0.05, max_queue=64, on_batch=batches.append)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(images[i], thresholds[i]) for i in range(32)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert sorted(len(batch.results) for batch in batches) == [8, 8, 8, 8]
    expected = runner.run(images, thresholds).results
    for got, want in zip(results, expected, strict=True):
        assert got.exit_index == want.exit_index
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-5)


class BlockedRunner:
    """Holds every batch until released, to fill the queue deterministically."""

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self.entered = threading.Event()
        self.release = threading.Event()

    def run(self, images: np.ndarray, thresholds: np.ndarray) -> RunOutput:
        self.entered.set()
        self.release.wait(10)
        return self.runner.run(images, thresholds)


def test_full_queue_refuses_at_once_and_stop_fails_waiting_requests(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)
    image, threshold = np.zeros((3, 8, 8), np.float32), np.ones(NUM_EXITS - 1)

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0, max_queue=1)  # type: ignore[arg-type]
        batcher.start()
        running = asyncio.create_task(batcher.submit(image, threshold))
        await asyncio.to_thread(blocked.entered.wait, 10)
        waiting = asyncio.create_task(batcher.submit(image, threshold))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as err:
            await batcher.submit(image, threshold)
        assert err.value.retry_after_s >= 1
        blocked.release.set()
        assert (await running).exit_index == NUM_EXITS - 1
        assert (await waiting).exit_index == NUM_EXITS - 1
        blocked.release.clear()
        stuck = asyncio.create_task(batcher.submit(image, threshold))
        await asyncio.sleep(0)
        await batcher.stop()
        blocked.release.set()
        with pytest.raises(BatcherClosedError):
            await stuck
        with pytest.raises(BatcherClosedError):
            await batcher.submit(image, threshold)

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_requests_not_the_worker(runner: SegmentRunner) -> None:
    class Flaky:
        calls = 0

        def run(self, images: np.ndarray, thresholds: np.ndarray) -> RunOutput:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return runner.run(images, thresholds)

    image, threshold = np.zeros((3, 8, 8), np.float32), np.ones(NUM_EXITS - 1)

    async def scenario() -> None:
        batcher = MicroBatcher(Flaky(), max_batch_size=4, max_wait_s=0, max_queue=4)  # type: ignore[arg-type]
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit(image, threshold)
        assert (await batcher.submit(image, threshold)).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_is_skipped(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)
    image, threshold = np.zeros((3, 8, 8), np.float32), np.ones(NUM_EXITS - 1)
    batches: list[RunOutput] = []

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, 4, 0, 4, on_batch=batches.append)  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.create_task(batcher.submit(image, threshold))
        await asyncio.to_thread(blocked.entered.wait, 10)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(image, threshold), 0.01)  # queued, then abandoned
        blocked.release.set()
        await first
        assert (await batcher.submit(image, threshold)).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())
    assert [len(batch.results) for batch in batches] == [1, 1]
