"""The adaptive batch wait (docs/configuration.md, "Batching") and batch occupancy per segment in /metrics.

A batch waits up to max_wait for company only while requests are known to be on their way (admitted,
their bodies read or decoded now); a lone request runs at once. Every test sets max_wait to a minute, so
that a request held by it would run into the test's bound (10 s) and fail it.
"""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.contract.model_repository import Manifest
from dynadapter.service.backends.onnxruntime import CPU
from dynadapter.service.batching import MicroBatcher
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.segment_runner import SegmentRunner, StageOutput
from tests.support.service import IMAGE, samples, serving, value
from tests.support.tiny_onnx_model import NUM_EXITS, png_bytes

MINUTE_S, BOUND_S = 60.0, 10.0
PIXELS, TO_THE_END, FIRST_EXIT = np.zeros((3, 8, 8), np.float32), np.ones(NUM_EXITS - 1), np.zeros(NUM_EXITS - 1)


@pytest.fixture(scope="module")
def runner(model_repo: Path) -> SegmentRunner:
    folder = model_repo / "tiny" / "1"
    return SegmentRunner([folder / f"segment_{k}.onnx" for k in range(NUM_EXITS)], [CPU], intra_op_threads=1)


def first_stage_rows(stages: list[StageOutput]) -> list[int]:
    return [stage.rows for stage in stages if stage.stage == 0]


def test_a_lone_request_runs_at_once_when_none_is_coming(runner: SegmentRunner) -> None:
    stages: list[StageOutput] = []

    async def scenario() -> int:
        batcher = MicroBatcher(runner, 8, MINUTE_S, 16, observers=[stages.append], coming=lambda: 0)
        batcher.start()
        try:
            return (await asyncio.wait_for(batcher.submit(PIXELS, TO_THE_END), BOUND_S)).exit_index
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == NUM_EXITS - 1
    assert first_stage_rows(stages) == [1]


def test_a_batch_waits_for_a_request_known_to_be_coming(runner: SegmentRunner) -> None:
    stages: list[StageOutput] = []
    coming = [1]

    async def scenario() -> None:
        batcher = MicroBatcher(runner, 8, MINUTE_S, 16, observers=[stages.append], coming=lambda: coming[0])
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(PIXELS, TO_THE_END))
            await asyncio.sleep(0.05)  # the worker holds the first job and waits: one more is coming
            assert not first.done()
            coming[0] = 0
            second = batcher.submit(PIXELS, TO_THE_END)
            await asyncio.wait_for(asyncio.gather(first, second), BOUND_S)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert first_stage_rows(stages) == [2]  # the two ran together


def test_a_batch_stops_waiting_when_the_coming_request_drops_out(runner: SegmentRunner) -> None:
    stages: list[StageOutput] = []
    coming = [1]

    async def scenario() -> None:
        batcher = MicroBatcher(runner, 8, MINUTE_S, 16, observers=[stages.append], coming=lambda: coming[0])
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(PIXELS, TO_THE_END))
            await asyncio.sleep(0.05)
            coming[0] = 0  # it failed before it reached the queue (a 400 while decoding)
            batcher.notify()
            await asyncio.wait_for(first, BOUND_S)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert first_stage_rows(stages) == [1]


def test_the_service_batches_a_request_with_one_still_decoding(
    start_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_client(max_batch_size=8, max_wait_ms=MINUTE_S * 1000)
    engine = client.app.state.service.registry.get()  # type: ignore[attr-defined]
    decoding, release, queued = threading.Event(), threading.Event(), threading.Event()
    prepare, classify = engine.prepare, engine.classify

    async def slow_prepare(data: bytes) -> np.ndarray:
        if data == png_bytes(1):  # the slow one: admitted, and known to be coming while it decodes
            decoding.set()
            await asyncio.to_thread(release.wait, BOUND_S)
        return await prepare(data)

    async def watched_classify(*args: object) -> object:
        queued.set()  # in the same step of the loop as the image is queued: the batcher's submit puts it first
        return await classify(*args)

    monkeypatch.setattr(engine, "prepare", slow_prepare)
    monkeypatch.setattr(engine, "classify", watched_classify)
    before = samples(client)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(client.post, "/classify", content=png_bytes(1), headers=IMAGE)
        assert decoding.wait(BOUND_S)
        fast = pool.submit(client.post, "/classify", content=png_bytes(2), headers=IMAGE)
        assert queued.wait(BOUND_S)  # the fast one is queued, its batch waits for the slow one
        release.set()
        assert slow.result(BOUND_S).status_code == fast.result(BOUND_S).status_code == 200
    after = samples(client)
    delta = {
        part: value(after, f"dynadapter_batch_size_{part}", model="tiny", version="1")
        - value(before, f"dynadapter_batch_size_{part}", model="tiny", version="1")
        for part in ("count", "sum")
    }
    assert delta == {"count": 1, "sum": 2}  # one batch of both


def test_a_lone_request_to_the_service_is_not_held_by_the_batch_wait(model_repo: Path) -> None:
    with serving(model_repo, max_wait_ms=str(MINUTE_S * 1000), max_batch_size="8") as server:
        with httpx.Client(base_url=server.url, timeout=BOUND_S) as http:
            for seed in range(3):  # one after another: each alone, none waits the minute
                response = http.post("/classify", content=png_bytes(seed), headers=IMAGE)
                assert response.status_code == 200, response.text
            batches = value(samples(http), "dynadapter_batch_size_count", model="tiny", version="1")
        server.stop()
        assert batches == 3
        assert "POST /classify" not in server.output  # no access log line per request by default


def test_occupancy_counts_the_images_each_segment_ran_on(runner: SegmentRunner, manifest: Manifest) -> None:
    metrics = ServiceMetrics()
    metrics.declare_model("tiny", "1", NUM_EXITS, 0)
    thresholds = np.stack([FIRST_EXIT, FIRST_EXIT, FIRST_EXIT, TO_THE_END])  # three of four leave at exit 0

    async def scenario() -> None:
        batcher = MicroBatcher(runner, 4, 0.0, 16, coming=lambda: 0)
        batcher.observers.subscribe(lambda stage: metrics.record_stage("tiny", "1", stage, manifest))
        batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(PIXELS, t) for t in thresholds))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    counts = {family.name: family for family in metrics.registry.collect()}
    observed = {
        (sample.labels["segment"], sample.name.rsplit("_", 1)[-1]): sample.value
        for sample in counts["dynadapter_segment_batch_images"].samples
        if sample.name.endswith(("_count", "_sum"))
    }
    assert observed == {
        ("0", "count"): 1, ("0", "sum"): 4,
        **{(str(k), part): 1 for k in range(1, NUM_EXITS) for part in ("count", "sum")},
    }  # fmt: skip
