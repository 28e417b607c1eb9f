"""Bounded load test: 32 concurrent clients for 20 s against a real server process, on loopback only.

It serves the demo model repository (demo/model_repo) when that holds a model, else the tiny test
model, and checks that every request is answered, that no 5xx appears but an explained 503 (queue
full), that the metrics count exactly what the clients saw, and that the server's memory does not
grow between the first and the second half of the run.
"""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.service import IMAGE, ROOT, Samples, ServiceProcess, samples, serving, value
from tests.support.tiny_onnx_model import TinyWeights, png_bytes, write_model_version

pytestmark = pytest.mark.load
logger = logging.getLogger(__name__)

CLIENTS = 32
DURATION_S = 20.0
MiB = 2**20
RSS_GROWTH_LIMIT_MB = 50
DEMO_REPO = ROOT / "demo" / "model_repo"
QUERIES = ["", "?mode=fast", "?mode=accurate", "?threshold=0.5", "?threshold=1", "?budget=0.8", "?top_k=3"]


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    error_code: str | None  # the JSON error code of a non-200 answer
    retry_after: str | None


@pytest.fixture(scope="module")
def load_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model repository when it holds a model, else the tiny test model."""
    if any(DEMO_REPO.glob("*/*/manifest.json")):
        return DEMO_REPO
    repo = tmp_path_factory.mktemp("model_repo")
    write_model_version(repo, TinyWeights.random(seed=0))
    return repo


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise AssertionError(f"no VmRSS for process {pid}")


async def client_loop(client: httpx.AsyncClient, index: int, images: list[bytes], end: float) -> list[Outcome]:
    """One client: back-to-back requests until `end`; a transport error fails the test (unanswered)."""
    outcomes = []
    i = index
    while time.monotonic() < end:
        start = time.monotonic()
        response = await client.post(
            f"/classify{QUERIES[i % len(QUERIES)]}", content=images[i % len(images)], headers=IMAGE
        )
        error = response.json().get("error", {}).get("code") if response.status_code != 200 else None
        outcomes.append(
            Outcome(response.status_code, time.monotonic() - start, error, response.headers.get("retry-after"))
        )
        i += CLIENTS
    return outcomes


async def rss_samples(pid: int, start: float, end: float) -> list[tuple[float, int]]:
    """(seconds since start, VmRSS) every 0.25 s until `end`."""
    found = []
    while time.monotonic() < end:
        found.append((time.monotonic() - start, vm_rss_bytes(pid)))
        await asyncio.sleep(0.25)
    return found


async def drive(server: ServiceProcess) -> tuple[list[Outcome], list[tuple[float, int]]]:
    images = [png_bytes(seed, (24 + seed % 3 * 8, 24 + seed % 4 * 8)) for seed in range(16)]
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        start = time.monotonic()
        end = start + DURATION_S
        rss = asyncio.create_task(rss_samples(server.process.pid, start, end))
        per_client = await asyncio.gather(*(client_loop(client, i, images, end) for i in range(CLIENTS)))
        return [outcome for outcomes in per_client for outcome in outcomes], await rss


def assert_only_explained_errors(outcomes: list[Outcome]) -> None:
    """Every answer a 200 or a 503 "queue full" with Retry-After; nothing else, no 5xx."""
    unexplained = [o for o in outcomes if o.status != 200 and not (o.error_code == "overloaded" and o.retry_after)]
    assert not unexplained, unexplained[:5]
    assert any(o.status == 200 for o in outcomes), "no request succeeded"


def assert_metrics_count_what_clients_saw(outcomes: list[Outcome], after: Samples, labels: dict[str, str]) -> None:
    statuses = Counter(outcome.status for outcome in outcomes)
    for status, count in statuses.items():
        assert value(after, "dynadapter_requests_total", **labels, code=str(status)) == count
    exits = sum(count for (name, _), count in after.items() if name == "dynadapter_exits_total")
    assert exits == statuses[200]
    assert value(after, "dynadapter_batch_size_sum", **labels) == statuses[200]


def summary(
    outcomes: list[Outcome], rss: list[tuple[float, int]], after: Samples, labels: dict[str, str]
) -> dict[str, float]:
    """Throughput, client latency, server latency and batch size, and the RSS growth between the halves."""
    latencies = np.array([outcome.seconds for outcome in outcomes if outcome.status == 200]) * 1000
    half = DURATION_S / 2
    growth = max(b for t, b in rss if t >= half) - max(b for t, b in rss if t < half)

    def ratio(name: str) -> float:
        return value(after, f"{name}_sum", **labels) / value(after, f"{name}_count", **labels)

    return {
        "requests": len(outcomes),
        "requests_per_s": round(len(outcomes) / DURATION_S, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "server_mean_ms": round(ratio("dynadapter_request_duration_seconds") * 1000, 1),
        "mean_batch": round(ratio("dynadapter_batch_size"), 2),
        "status_503": sum(outcome.status == 503 for outcome in outcomes),
        "rss_mb": round(rss[-1][1] / MiB, 1),
        "rss_growth_mb": round(growth / MiB, 1),
    }


def test_32_clients_for_20_seconds(load_repo: Path, record_property: Callable[[str, object], None]) -> None:
    with serving(load_repo, log_level="warning", intra_op_threads="1") as server:
        outcomes, rss = asyncio.run(drive(server))
        with httpx.Client(base_url=server.url) as client:
            served = client.get("/v1/models").json()["models"][0]
            labels = {"model": served["name"], "version": served["version"]}
            after = samples(client)
    assert_only_explained_errors(outcomes)
    # Exact, because the server counts a request before the last byte of its answer leaves.
    assert_metrics_count_what_clients_saw(outcomes, after, labels)
    report = summary(outcomes, rss, after, labels)
    for key, measured in report.items():
        record_property(key, measured)
    logger.info("load test against %s (%s): %s", load_repo, labels, report)
    assert report["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB, report
    assert "Traceback" not in server.output, server.output[-2000:]
