"""`serve` and `python -m dynadapter.service`: a real uvicorn process, its refusal of a bad model, its shutdown."""

import gc
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from dynadapter.bench.lab.process import free_port
from dynadapter.service import main
from dynadapter.service.main import serve
from dynadapter.service.settings import Settings
from tests.support.service import IMAGE, ROOT, service_env, serving
from tests.support.tiny_onnx_model import png_bytes


def assert_clean_exit(returncode: int, output: str) -> None:
    # uvicorn finishes the lifespan shutdown, then re-raises SIGTERM so the exit status tells why.
    assert returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Traceback" not in output


def test_serve_refuses_a_bad_model_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        serve(Settings(model_repo=tmp_path / "missing"))
    message = str(exit_.value.code)
    assert message.startswith("dynadapter serve: cannot load the model:") and "\n" not in message


def corrupt_segment(folder: Path) -> None:
    segment = folder / "segment_0.onnx"
    segment.write_bytes(segment.read_bytes()[:-1])


def newer_schema(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"schema_version": 2}))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (corrupt_segment, "segment_0.onnx: sha256 mismatch"),
        (newer_schema, "invalid manifest: schema_version: unsupported schema_version 2"),
    ],
)
def test_python_m_service_refuses_a_damaged_model_with_one_line(
    tmp_path: Path, model_repo: Path, damage: Callable[[Path], None], expected: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repo, repo)
    damage(repo / "tiny" / "1")
    result = subprocess.run(
        [sys.executable, "-m", "dynadapter.service"],
        cwd=ROOT,
        env=service_env(repo, free_port()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dynadapter serve: cannot load the model:") and expected in line


def test_python_m_service_serves_and_shuts_down_cleanly(model_repo: Path) -> None:
    with serving(model_repo) as server:
        response = httpx.post(f"{server.url}/classify", content=png_bytes(0), headers=IMAGE)
        assert response.status_code == 200
        assert response.json()["model"] == "tiny"
        assert (
            'dynadapter_requests_total{code="200",model="tiny",version="1"} 1.0'
            in httpx.get(f"{server.url}/metrics").text
        )
    assert_clean_exit(server.process.returncode, server.output)


def test_sigterm_lets_the_request_in_flight_finish(model_repo: Path) -> None:
    # A body that arrives slowly (its second half 2 s after the first): a window in which to send SIGTERM.
    data = png_bytes(0)

    def slow_body() -> Iterator[bytes]:
        yield data[:20]
        time.sleep(2.0)
        yield data[20:]

    with serving(model_repo) as server, ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        pending = pool.submit(httpx.post, f"{server.url}/classify", content=slow_body(), headers=IMAGE, timeout=30)
        while (
            'dynadapter_inflight_requests{model="tiny",version="1"} 1.0' not in httpx.get(f"{server.url}/metrics").text
        ):
            assert time.monotonic() - start < 1.5, "the request never got in flight"
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        response = pending.result()
        returncode = server.stop()
    assert response.status_code == 200, response.text
    assert time.monotonic() - start >= 2.0  # it really was answered after its whole body, not cut short
    assert_clean_exit(returncode, server.output)


def test_one_worker_per_process(monkeypatch: pytest.MonkeyPatch, model_repo: Path) -> None:
    # The metrics registry, the batch queue and the sessions live in one process: serve() never forks
    # workers, and hands uvicorn an app object, which uvicorn cannot spread over several workers anyway.
    configs: list[uvicorn.Config] = []

    def run(server: uvicorn.Server) -> None:
        configs.append(server.config)
        server.started = True

    monkeypatch.setattr(main._Server, "run", run)
    serve(Settings(model_repo=model_repo, providers="cpu", shutdown_timeout_s=7))
    (config,) = configs
    assert isinstance(config.app, FastAPI)
    assert config.workers == 1 and config.timeout_graceful_shutdown == 7
    assert config.access_log is False  # no line per request unless access_log is set


def test_access_log_is_a_setting(model_repo: Path) -> None:
    app = FastAPI()
    assert main.uvicorn_config(app, Settings(model_repo=model_repo, access_log=True)).access_log is True
    assert main.uvicorn_config(app, Settings(model_repo=model_repo)).access_log is False


def test_the_start_up_heap_is_frozen_out_of_the_garbage_collectors_reach(
    start_client: Callable[..., object],
) -> None:
    gc.unfreeze()
    try:
        start_client()  # ready: the models are loaded
        assert gc.get_freeze_count() > 0  # a full collection no longer traverses them
    finally:
        gc.unfreeze()
