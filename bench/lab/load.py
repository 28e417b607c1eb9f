"""Load generation: clients sending a benchmark's images (``lab.images``) back to back, and what they saw.

``measure`` runs ``concurrency`` clients against one URL until a request or time budget is spent;
``summarize`` and ``summarize_answers`` turn the ``Sample``s into the rows of results.json (latencies in ms,
throughput in requests/s; ``lab.rows`` reads them back). httpx is imported inside functions: the
``dynadapter`` parser imports the benchmarks, also in the serving image.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dynadapter.bench.lab.images import HEADERS, BenchImages

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it."""

    seconds: float
    ok: bool
    correct: bool = False
    gflops: float | None = None  # what this service reports it used; LitServe does not say
    at: float = 0.0  # when it was sent (time.perf_counter, s)
    image: int = -1  # index into BenchImages.bodies
    answer: dict[str, Any] | None = None  # the 200 response's JSON


@dataclass
class Measured:
    """Every sample of one (variant, concurrency) over all rounds, and each round's (answered, seconds)."""

    samples: list[Sample] = field(default_factory=list)
    rounds: list[tuple[int, float]] = field(default_factory=list)

    def add(self, samples: list[Sample], seconds: float) -> None:
        self.samples += samples
        self.rounds.append((sum(sample.ok for sample in samples), seconds))


class _Budget:
    """Hands out request numbers until ``requests`` are out or ``deadline`` (perf_counter) passed."""

    def __init__(self, requests: int, deadline: float) -> None:
        self._requests, self._deadline, self._sent = requests, deadline, 0

    def take(self) -> int | None:
        if self._sent >= self._requests or time.perf_counter() >= self._deadline:
            return None
        self._sent += 1
        return self._sent - 1


async def _request(client: httpx.AsyncClient, url: str, images: BenchImages, index: int) -> Sample:
    import httpx

    image = index % len(images.bodies)
    start = time.perf_counter()
    try:
        response = await client.post(url, content=images.bodies[image], headers=HEADERS)
        seconds = time.perf_counter() - start
    except httpx.HTTPError as err:
        log.warning("request to %s failed: %r", url, err)
        return Sample(time.perf_counter() - start, ok=False, at=start, image=image)
    if response.status_code != 200:
        log.warning("%s answered %d: %s", url, response.status_code, response.text[:200])
        return Sample(seconds, ok=False, at=start, image=image)
    body = response.json()
    gflops = body["gflops"]["used"] if "gflops" in body else None
    correct = body["class_id"] == images.targets[image]
    return Sample(seconds, ok=True, correct=correct, gflops=gflops, at=start, image=image, answer=body)


async def _send(client: httpx.AsyncClient, url: str, images: BenchImages, budget: _Budget) -> list[Sample]:
    """One client: requests back to back while the budget lasts."""
    samples = []
    while (index := budget.take()) is not None:
        samples.append(await _request(client, url, images, index))
    return samples


async def _load(
    client: httpx.AsyncClient, url: str, images: BenchImages, concurrency: int, budget: _Budget
) -> list[Sample]:
    """``concurrency`` clients sharing one budget; every sample, in no particular order."""
    per_client = await asyncio.gather(*(_send(client, url, images, budget) for _ in range(concurrency)))
    return [sample for samples in per_client for sample in samples]


def _http_client(concurrency: int) -> httpx.AsyncClient:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S)


async def measure(
    url: str, images: BenchImages, concurrency: int, requests: int, duration_s: float
) -> tuple[list[Sample], float]:
    """``concurrency`` clients back to back until ``requests`` are sent or ``duration_s`` passed.

    One untimed request per client first: it opens the connections and wakes the server's threads.
    """
    async with _http_client(concurrency) as client:
        await _load(client, url, images, concurrency, _Budget(concurrency, math.inf))
        start = time.perf_counter()
        samples = await _load(client, url, images, concurrency, _Budget(requests, start + duration_s))
        return samples, time.perf_counter() - start


async def answer_every_image(url: str, images: BenchImages, concurrency: int) -> list[Sample]:
    """Every image once: accuracy and GFLOPs on the same images for every variant (and the server's warm-up)."""
    async with _http_client(concurrency) as client:
        return await _load(client, url, images, concurrency, _Budget(len(images.bodies), math.inf))


def summarize(name: str, concurrency: int, measured: Measured) -> dict[str, Any]:
    """A results row of one (variant, concurrency) over its rounds (``lab.rows.LoadRow`` reads it back)."""
    ok = [s for s in measured.samples if s.ok]
    latencies = np.array([s.seconds for s in ok]) * 1000
    seconds = sum(seconds for _, seconds in measured.rounds)
    return {
        "variant": name,
        "concurrency": concurrency,
        "requests": len(measured.samples),
        "errors": len(measured.samples) - len(ok),
        "p50_ms": float(np.percentile(latencies, 50)) if ok else None,
        "p95_ms": float(np.percentile(latencies, 95)) if ok else None,
        "throughput_rps": len(ok) / seconds if seconds else None,
        # The spread over rounds shows how much the machine's load moved the numbers.
        "throughput_rps_rounds": [answered / seconds for answered, seconds in measured.rounds if seconds],
    }


def summarize_answers(samples: list[Sample]) -> dict[str, Any]:
    """Accuracy and GFLOPs per image of every image classified once (``lab.rows.AnswersRow`` reads it back)."""
    ok = [s for s in samples if s.ok]
    gflops = [s.gflops for s in ok if s.gflops is not None]
    return {
        "images": len(samples),
        "errors": len(samples) - len(ok),
        "accuracy": sum(s.correct for s in ok) / len(ok) if ok else None,
        "gflops_per_image": float(np.mean(gflops)) if gflops else None,
    }
