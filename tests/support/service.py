"""The service as the tests drive it: readiness polling, /metrics samples, the JSON error shape and a real
server process on a free loopback port (bench/lab/process.py's ``ServerProcess``)."""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dynadapter.bench.lab.process import ServerProcess, clean_environment

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


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`response` has `status` and the service's JSON error shape with `code` and a message; returns the body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def service_env(model_repo: Path, port: int, **settings: str) -> dict[str, str]:
    """This environment without any DYNADAPTER_* of the caller's, plus loopback, CPU and `settings`."""
    env = clean_environment() | {
        "DYNADAPTER_MODEL_REPO": str(model_repo),
        "DYNADAPTER_HOST": "127.0.0.1",
        "DYNADAPTER_PORT": str(port),
        "DYNADAPTER_PROVIDERS": "cpu",
        "DYNADAPTER_LOG_LEVEL": "info",
        "DYNADAPTER_GRPC_PORT": "0",  # no gRPC listener unless a test asks for one (grpc_port=...)
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
