"""`serve` and `python -m service`: a real uvicorn process, its refusal of a bad model, its shutdown."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.main import serve
from service.settings import Settings
from tests.service.tiny_onnx_model import png_bytes

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(model_repo: Path, port: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DYNADAPTER_")}
    env |= {
        "DYNADAPTER_MODEL_REPO": str(model_repo),
        "DYNADAPTER_HOST": "127.0.0.1",
        "DYNADAPTER_PORT": str(port),
        "DYNADAPTER_PROVIDERS": "cpu",
        "DYNADAPTER_LOG_LEVEL": "info",
    }
    return env


def test_serve_refuses_a_bad_model_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve(Settings(model_repo=tmp_path / "missing"))
    message = str(exit_.value.code)
    assert message.startswith("dynadapter serve: cannot load the model:") and "\n" not in message


def test_python_m_service_refuses_a_corrupt_segment(tmp_path: Path, model_repo: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    segment = repo / "tiny" / "1" / "segment_0.onnx"
    segment.write_bytes(segment.read_bytes()[:-1])
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=service_env(repo, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "segment_0.onnx: sha256 mismatch" in result.stderr.strip().splitlines()[-1]


def test_python_m_service_serves_and_shuts_down_cleanly(model_repo: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=service_env(model_repo, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the service never became ready"
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        response = httpx.post(f"{base}/classify", content=png_bytes(0), headers={"content-type": "image/png"})
        assert response.status_code == 200
        assert response.json()["model"] == "tiny"
        assert 'dynadapter_requests_total{code="200",model="tiny"} 1.0' in httpx.get(f"{base}/metrics").text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    # uvicorn finishes the lifespan shutdown, then re-raises SIGTERM so the exit status tells why.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr and "Traceback" not in stderr
