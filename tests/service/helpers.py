"""Helpers shared by the service tests and the load test: readiness polling and a real server process."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(model_repo: Path, port: int, **settings: str) -> dict[str, str]:
    """This environment without any DYNADAPTER_* of the caller's, plus loopback, CPU and `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DYNADAPTER_")}
    env |= {
        "DYNADAPTER_MODEL_REPO": str(model_repo),
        "DYNADAPTER_HOST": "127.0.0.1",
        "DYNADAPTER_PORT": str(port),
        "DYNADAPTER_PROVIDERS": "cpu",
        "DYNADAPTER_LOG_LEVEL": "info",
    }
    return env | {f"DYNADAPTER_{name.upper()}": value for name, value in settings.items()}


class ServiceProcess:
    """`python -m dynadapter.service` on a free loopback port; its output goes to a file, so it never blocks on a pipe.

    `site`: a folder the project was installed into (`pip install --target`), run instead of the checkout.
    """

    def __init__(self, model_repo: Path, site: Path | None = None, **settings: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = tempfile.TemporaryFile("w+")
        env = service_env(model_repo, port, **settings) | ({"PYTHONPATH": str(site)} if site else {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dynadapter.service"],
            cwd=site or ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""  # what it wrote, once stopped

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"the service exited: {self.read_output()}"
            assert time.monotonic() < deadline, "the service never became ready"
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (if still running), wait for the exit and keep the output; the exit status. Idempotent."""
        if self._log.closed:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.output = self.read_output()
            self._log.close()

    def read_output(self) -> str:
        self._log.seek(0)
        return self._log.read()


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
