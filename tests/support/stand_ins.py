"""Stand-ins for parts of a running model's runner: slow segments (``SlowSegments``), a cascade that waits
at a gate the test opens (``Gate``, installed by ``gate_runner``) and a backend whose segment 0 waits at one
(``SegmentGate``, recording the rows each segment runs on)."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dynadapter.service.segment_runner import StageOutput


class SlowSegments:
    """Wraps a runner's backend so that segment k takes `delays[k]` seconds more: an artificially slow model.

    The runner's time estimates are told so for batches of `rows` images, as if it had run slow for a while.
    """

    def __init__(self, runner: Any, delays: dict[int, float], rows: tuple[int, ...] = (1,)) -> None:
        self._backend = runner.backend
        self.delays = delays
        runner.backend = self
        for k, delay in delays.items():
            for size in rows:
                for _ in range(100):  # past the exponential weighting of the fast warm-up runs
                    runner.times.record(k, size, delay)

    def __getattr__(self, name: str) -> Any:  # the rest of the backend's interface, as it is
        return getattr(self._backend, name)

    def run(self, k: int, x: Any, need_logits: bool) -> Any:
        time.sleep(self.delays.get(k, 0.0))
        return self._backend.run(k, x, need_logits)


class Gate:
    """Stands in for the runner's `cascade`: inference waits until the test opens the gate."""

    def __init__(self, cascade: Callable[..., Iterator[StageOutput]]) -> None:
        self._cascade = cascade
        self.entered = threading.Event()
        self.open = threading.Event()

    def __call__(self, images: np.ndarray, thresholds: np.ndarray, *rest: object) -> Iterator[StageOutput]:
        self.entered.set()
        self.open.wait(10)
        yield from self._cascade(images, thresholds, *rest)


def gate_runner(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Gate:
    """Put a ``Gate`` in front of the serving model's cascade (undone with `monkeypatch`)."""
    runner = client.app.state.service.registry.get().runner  # type: ignore[attr-defined]
    gate = Gate(runner.cascade)
    monkeypatch.setattr(runner, "cascade", gate)
    return gate


class SegmentGate:
    """Wraps the runner's backend: records the rows each segment runs on; segment 0 waits for `open`."""

    def __init__(self, runner: Any) -> None:
        self._backend = runner.backend
        self.rows: list[tuple[int, int]] = []  # (segment, rows)
        self.entered = threading.Event()
        self.open = threading.Event()
        runner.backend = self

    def __getattr__(self, name: str) -> Any:  # the rest of the backend's interface, as it is
        return getattr(self._backend, name)

    def run(self, k: int, x: Any, need_logits: bool) -> Any:
        self.rows.append((k, len(x)))
        if k == 0:
            self.entered.set()
            self.open.wait(20)
        return self._backend.run(k, x, need_logits)


class HeldFirstRequest:
    """Wraps an engine's `classify_all`: the first request waits at it (admitted, its images not queued: a batch
    waits for it) until `release`; `queued` is set as the second request's images are queued."""

    def __init__(self, engine: Any) -> None:
        self._classify_all = engine.classify_all
        self.holding, self.release, self.queued = threading.Event(), threading.Event(), threading.Event()
        engine.classify_all = self

    async def __call__(self, *args: Any) -> Any:
        first = not self.holding.is_set()
        if first:
            self.holding.set()
            await asyncio.to_thread(self.release.wait, 20)
        else:
            self.queued.set()  # the images are queued in this same step of the event loop
        return await self._classify_all(*args)
