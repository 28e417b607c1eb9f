"""The one server-process helper (bench/lab/process.py) that the benchmarks and the service tests share."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import pytest

from dynadapter.bench.lab.process import ServerProcess
from tests.support.service import ServiceProcess

#: a stand-in server: says what it was given (arguments, $PORT, $DYNADAPTER_X), then "ready", and waits
SERVER = (
    "import os, sys, time; print(sys.argv[1:], os.environ.get('PORT'), os.environ.get('DYNADAPTER_X'), 'ready', "
    "flush=True); time.sleep(60)"
)


def started(name: str, **kwargs: Any) -> ServerProcess:
    """The stand-in server, once it has said it is ready."""
    server = ServerProcess(name, [sys.executable, "-c", SERVER], **kwargs)
    deadline = time.monotonic() + 30
    while "ready" not in server.output:
        assert time.monotonic() < deadline and server.process.poll() is None, server.output
        time.sleep(0.05)
    return server


def test_the_port_goes_as_a_flag_and_sigterm_stops_it_keeping_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNADAPTER_X", "from the caller")  # never reaches a server
    server = started("flag")
    port = server.url.rsplit(":", 1)[1]
    assert server.url == f"http://127.0.0.1:{port}" and server.classify_url == server.url + "/classify"
    assert server.stop() == -signal.SIGTERM
    assert server.output == f"['--port', '{port}'] None None ready\n"
    assert server.stop() == -signal.SIGTERM  # idempotent, the output kept
    assert server.output == f"['--port', '{port}'] None None ready\n"


def test_the_port_goes_in_the_environment_where_asked() -> None:
    server = started("env", env={"DYNADAPTER_X": "given"}, port_env="PORT")
    port = server.url.rsplit(":", 1)[1]
    server.stop()
    assert server.output == f"[] {port} given ready\n"


def test_the_service_tests_start_the_service_through_it() -> None:
    assert issubclass(ServiceProcess, ServerProcess)


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc), once a signal sent just before has had 1 s to land."""
    deadline = time.monotonic() + 1.0
    while True:
        with open(f"/proc/{pid}/stat") as stat:
            stopped = stat.read().rsplit(")", 1)[1].split()[0] == "T"
        if stopped or time.monotonic() > deadline:
            return stopped
        time.sleep(0.02)


def test_pause_freezes_a_server_unless_it_is_not_freezable() -> None:
    """The Triton peers are left running (`freezable = False`): thawed after a freeze, tritonserver crashed."""
    server = started("stand-in", port_env="PORT")
    try:
        server.pause()
        assert _stopped(server.process.pid)
        server.resume()
        server.freezable = False
        server.pause()
        assert not _stopped(server.process.pid)
    finally:
        server.stop()
