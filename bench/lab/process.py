"""Server processes on free loopback ports: start, wait for readiness, freeze and thaw, stop keeping the output.

The one server-process helper of the project: the serving benchmarks run every server through it, and
the service tests' ``ServiceProcess`` (tests/support/service.py) is a thin user of it. Standard library
only at import time (httpx is imported where readiness is polled): ``dynadapter``'s parser imports
the benchmarks, also in the serving image.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 180.0
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """This process's environment without any DYNADAPTER_* variable: a caller's settings must not
    configure one server and not the others."""
    return {key: value for key, value in os.environ.items() if not key.startswith("DYNADAPTER_")}


class ServerProcess:
    """A server on a free loopback port, in its own process group (LitServe forks workers); its output goes to
    a file, so it never blocks on a pipe.

    ``argv`` is the command; the port is appended as ``--port N``, or given in the environment variable
    ``port_env`` where the server reads it from there. ``env`` is added to the caller's environment less its
    DYNADAPTER_* variables; ``cwd``: the working directory (default: the caller's). ``ready_path`` answers 200
    once the server is ready; ``classify_url`` is where the benchmarks send images.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        ready_path: str = "/readyz",
        classify_path: str = "/classify",
        *,
        env: dict[str, str] | None = None,
        port_env: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        port = free_port()
        self.name = name
        self.url = f"http://{LOOPBACK}:{port}"
        self.classify_url = self.url + classify_path
        self._ready_url = self.url + ready_path
        self._log = tempfile.TemporaryFile("w+")
        self._kept: str | None = None  # the output, once stopped
        # False: `pause` leaves it running. tritonserver's Python backend crashed (signal 11, boost::interprocess
        # lock_exception) on being thawed after a freeze; an idle Triton takes next to no CPU.
        self.freezable = True
        port_in_env = {port_env: str(port)} if port_env else {}
        self.process = subprocess.Popen(
            argv if port_env else [*argv, "--port", str(port)],
            cwd=cwd,
            env=clean_environment() | (env or {}) | port_in_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll the readiness path until it answers 200. RuntimeError if the server exits or ``timeout_s`` passes."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.name} server exited: {self.output[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server was not ready after {timeout_s:.0f} s")
            try:
                if httpx.get(self._ready_url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def pause(self) -> None:
        """SIGSTOP to the group: a frozen server takes no CPU from the one under measurement (none where not
        ``freezable``)."""
        if self.freezable:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.freezable:
            os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM to the whole group (LitServe's workers outlive a lone parent), SIGKILL if it lingers; keep the
        output. The exit status (negative: the signal that ended it). Idempotent."""
        if self._kept is not None:
            return self.process.returncode
        if self.process.poll() is None:
            self.resume()
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the %s server ignored SIGTERM for %.0f s; killing it", self.name, timeout_s)
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind by the parent
        self.process.wait()
        self._kept = self._read()
        self._log.close()
        return self.process.returncode

    @property
    def output(self) -> str:
        """What the server wrote (stdout and stderr) so far, or in all once stopped."""
        return self._read() if self._kept is None else self._kept

    def _read(self) -> str:
        self._log.seek(0)
        return self._log.read()


def launch(stack: contextlib.ExitStack, commands: dict[str, tuple[list[str], str, str]]) -> dict[str, ServerProcess]:
    """Start every server of ``commands`` (name -> argv, readiness path, classify path) at once (start-up is
    mostly imports), each stopped when ``stack`` closes, and wait until all are ready."""
    servers = {}
    for name, (argv, ready, classify) in commands.items():
        servers[name] = ServerProcess(name, argv, ready, classify)
        stack.callback(servers[name].stop)
    for server in servers.values():
        server.wait_ready()
        log.info("the %s server is ready at %s", server.name, server.url)
    return servers


@contextlib.contextmanager
def awake(server: ServerProcess) -> Iterator[ServerProcess]:
    """``server`` resumed for the block and frozen again after it: only the server under measurement runs."""
    server.resume()
    try:
        yield server
    finally:
        server.pause()
