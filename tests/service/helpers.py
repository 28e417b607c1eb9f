import time

from fastapi.testclient import TestClient


def wait_ready(client: TestClient, timeout_s: float = 20.0) -> None:
    """Poll /readyz until the background warm-up has finished."""
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service did not become ready"
        time.sleep(0.01)
