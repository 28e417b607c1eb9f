"""Helpers shared by the service tests and the load test: readiness polling and a real server process."""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dynadapter.bench.lab.process import ServerProcess, clean_environment, free_port

__all__ = ["IMAGE", "ROOT", "ServiceProcess", "SlowSegments", "free_port", "samples", "service_env", "serving", "value"]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = {"content-type": "image/png"}


def wait_ready(client: TestClient, timeout_s: float = 20.0) -> None:
    """Poll /readyz until the background warm-up has finished."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.01)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(client: httpx.Client) -> Samples:
    """Every sample of /metrics, keyed by (name, labels); `client` is a TestClient or a real httpx client."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(snapshot: Samples, name: str, **labels: str) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def service_env(model_repo: Path, port: int, **settings: str) -> dict[str, str]:
    """This environment without any DYNADAPTER_* of the caller's, plus loopback, CPU and `settings`."""
    env = clean_environment() | {
        "DYNADAPTER_MODEL_REPO": str(model_repo),
        "DYNADAPTER_HOST": "127.0.0.1",
        "DYNADAPTER_PORT": str(port),
        "DYNADAPTER_PROVIDERS": "cpu",
        "DYNADAPTER_LOG_LEVEL": "info",
    }
    return env | {f"DYNADAPTER_{name.upper()}": value for name, value in settings.items()}


class ServiceProcess(ServerProcess):
    """`python -m dynadapter.service` on a free loopback port (bench/lab/process.py's ``ServerProcess``: its own
    process group, output to a file, ``stop`` with SIGTERM keeping ``output``), configured by `settings`.

    `site`: a folder the project was installed into (`pip install --target`), run instead of the checkout.
    """

    def __init__(self, model_repo: Path, site: Path | None = None, **settings: str) -> None:
        super().__init__(
            "service",
            [sys.executable, "-m", "dynadapter.service"],
            env=service_env(model_repo, 0, **settings) | ({"PYTHONPATH": str(site)} if site else {}),
            port_env="DYNADAPTER_PORT",
            cwd=site or ROOT,
        )


@contextmanager
def serving(model_repo: Path, site: Path | None = None, **settings: str) -> Iterator[ServiceProcess]:
    """A ready service process for the block; stopped with SIGTERM after it (its output kept)."""
    server = ServiceProcess(model_repo, site, **settings)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


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
