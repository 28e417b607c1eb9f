import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynadapter.service.backends.onnxruntime import CPU
from dynadapter.service.batching import BatcherClosedError, MicroBatcher, QueueFullError
from dynadapter.service.segment_runner import SegmentRunner, StageOutput
from tests.support.tiny_onnx_model import NUM_EXITS

IMAGE, RUN_TO_THE_END = np.zeros((3, 8, 8), np.float32), np.ones(NUM_EXITS - 1)


@pytest.fixture(scope="module")
def runner(model_repo: Path) -> SegmentRunner:
    folder = model_repo / "tiny" / "1"
    return SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU], intra_op_threads=1)


def batch_sizes(stages: list[StageOutput]) -> list[int]:
    return [stage.rows for stage in stages if stage.stage == 0]


def test_concurrent_requests_share_batches_and_get_what_they_would_get_alone(runner: SegmentRunner) -> None:
    images = np.random.default_rng(5).normal(0, 1, (32, 3, 8, 8)).astype(np.float32)
    thresholds = np.random.default_rng(6).choice([0.0, 0.5, 0.8, 1.0], size=(32, NUM_EXITS - 1))
    stages: list[StageOutput] = []

    async def scenario() -> list:
        batcher = MicroBatcher(runner, max_batch_size=8, max_wait_s=0.05, max_queue=64, observers=[stages.append])
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(images[i], thresholds[i]) for i in range(32)))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert batch_sizes(stages) == [8, 8, 8, 8]  # four batches, each with mixed thresholds
    assert len({result.exit_index for result in results}) == NUM_EXITS
    for i, got in enumerate(results):
        alone = runner.run(images[i : i + 1], thresholds[i : i + 1]).results[0]
        assert got.exit_index == alone.exit_index
        assert np.argmax(got.logits) == np.argmax(alone.logits)
        np.testing.assert_allclose(got.logits, alone.logits, atol=1e-5)


class HeldAfterFirstStage:
    """Runs stage 0, then holds the rest of the cascade until released."""

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self.times = runner.times
        self.release = threading.Event()

    def cascade(self, images: np.ndarray, thresholds: np.ndarray, *rest: Any) -> Iterator[StageOutput]:
        stages = self.runner.cascade(images, thresholds, *rest)
        yield next(stages)
        self.release.wait(10)
        yield from stages


def test_an_early_leaver_is_answered_while_its_batch_runs_on(runner: SegmentRunner) -> None:
    held = HeldAfterFirstStage(runner)
    stages: list[StageOutput] = []

    async def scenario() -> None:
        batcher = MicroBatcher(held, max_batch_size=2, max_wait_s=1.0, max_queue=4, observers=[stages.append])  # type: ignore[arg-type]
        batcher.start()
        first_exit = asyncio.create_task(batcher.submit(IMAGE, np.zeros(NUM_EXITS - 1)))
        to_the_end = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        early = await asyncio.wait_for(first_exit, 5)  # answered with the later stages still held
        assert early.exit_index == 0 and not to_the_end.done()
        assert [(stage.stage, stage.rows) for stage in stages] == [(0, 2)]  # counted before answered
        held.release.set()
        assert (await to_the_end).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())
    assert [(stage.stage, stage.rows) for stage in stages] == [(k, 2 if k == 0 else 1) for k in range(NUM_EXITS)]


class BlockedRunner:
    """Holds every batch until released, to fill the queue deterministically."""

    def __init__(self, runner: SegmentRunner) -> None:
        self.runner = runner
        self.times = runner.times
        self.entered = threading.Event()
        self.release = threading.Event()

    def cascade(self, images: np.ndarray, thresholds: np.ndarray, *rest: Any) -> Iterator[StageOutput]:
        self.entered.set()
        self.release.wait(10)
        yield from self.runner.cascade(images, thresholds, *rest)


def test_full_queue_refuses_at_once(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0, max_queue=1)  # type: ignore[arg-type]
        batcher.start()
        running = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        await asyncio.to_thread(blocked.entered.wait, 10)
        waiting = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as err:
            await batcher.submit(IMAGE, RUN_TO_THE_END)
        assert err.value.retry_after_s >= 1
        blocked.release.set()
        assert (await running).exit_index == NUM_EXITS - 1
        assert (await waiting).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())


def test_stop_fails_running_and_waiting_requests(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_s=0, max_queue=4)  # type: ignore[arg-type]
        batcher.start()
        running = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        await asyncio.to_thread(blocked.entered.wait, 10)
        waiting = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        await asyncio.sleep(0)
        await batcher.stop()
        blocked.release.set()
        for task in (running, waiting):
            with pytest.raises(BatcherClosedError):
                await task
        with pytest.raises(BatcherClosedError):
            await batcher.submit(IMAGE, RUN_TO_THE_END)

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_requests_not_the_worker(runner: SegmentRunner) -> None:
    class Flaky:
        calls = 0
        times = runner.times

        def cascade(self, images: np.ndarray, thresholds: np.ndarray, *rest: Any) -> Iterator[StageOutput]:
            self.calls += 1
            stages = runner.cascade(images, thresholds, *rest)
            yield next(stages)
            if self.calls == 1:
                raise RuntimeError("boom")
            yield from stages

    async def scenario() -> None:
        batcher = MicroBatcher(Flaky(), max_batch_size=2, max_wait_s=0.05, max_queue=4)  # type: ignore[arg-type]
        batcher.start()
        early, late = await asyncio.gather(
            batcher.submit(IMAGE, np.zeros(NUM_EXITS - 1)),
            batcher.submit(IMAGE, RUN_TO_THE_END),
            return_exceptions=True,
        )
        assert not isinstance(early, BaseException) and early.exit_index == 0  # answered before the failure
        assert isinstance(late, RuntimeError) and str(late) == "boom"
        assert (await batcher.submit(IMAGE, RUN_TO_THE_END)).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())


def test_a_caller_that_gives_up_is_skipped(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)
    stages: list[StageOutput] = []

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, 4, 0, 4, observers=[stages.append])  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.create_task(batcher.submit(IMAGE, RUN_TO_THE_END))
        await asyncio.to_thread(blocked.entered.wait, 10)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(IMAGE, RUN_TO_THE_END), 0.01)  # queued, then abandoned
        blocked.release.set()
        await first
        assert (await batcher.submit(IMAGE, RUN_TO_THE_END)).exit_index == NUM_EXITS - 1
        await batcher.stop()

    asyncio.run(scenario())
    assert batch_sizes(stages) == [1, 1]


def test_images_are_shadowed_only_when_nothing_else_waits(runner: SegmentRunner) -> None:
    blocked = BlockedRunner(runner)
    asked: list[int] = []
    stages: list[StageOutput] = []

    def sampler(batch: int) -> np.ndarray:
        asked.append(batch)
        return np.ones(batch, dtype=bool)

    async def scenario() -> None:
        batcher = MicroBatcher(blocked, 1, 0, 4, observers=[stages.append], shadow_sampler=sampler)  # type: ignore[arg-type]
        batcher.start()
        first = asyncio.create_task(batcher.submit(IMAGE, np.zeros(NUM_EXITS - 1)))
        await asyncio.to_thread(blocked.entered.wait, 10)  # the first batch formed with an empty queue
        others = [asyncio.create_task(batcher.submit(IMAGE, np.zeros(NUM_EXITS - 1))) for _ in range(2)]
        await asyncio.sleep(0)
        blocked.release.set()
        for result in await asyncio.gather(first, *others):
            assert result.exit_index == 0  # answered at exit 0 whether shadowed or not
        # Answers go out at exit 0; the shadowed images run on to the last exit after that.
        for _ in range(500):
            if sum(len(stage.shadows) for stage in stages) >= 2:
                break
            await asyncio.sleep(0.01)
        await batcher.stop()

    asyncio.run(scenario())
    assert asked == [1, 1]  # the first and the last batch; the second formed while the third waited
    assert sum(len(stage.shadows) for stage in stages) == 2
