"""Load from wrk, a C load generator: the serving benchmarks' timed rounds, without Python clients on the cores the
servers need.

``run_wrk`` sends a benchmark's uploads (``lab.images``: real encoded test images, cycled) to one URL from
``connections`` keep-alive connections for ``duration_s`` whole seconds. wrk runs a Lua script written here
(``lua_script``): ``init`` reads the bodies from files and ``request`` cycles them; ``response`` counts every
answer that is not 2xx (wrk's own ``errors.status`` only counts >= 400); ``done`` prints one line of JSON
(``RESULT_MARK`` then the object) with the socket errors, the non-2xx count and the whole latency
distribution (wrk's histogram, microseconds -> count), so that rounds merge exactly (``summarize_rounds``)
instead of averaging percentiles. ``parse_output`` reads that line back.

wrk is Debian's ``wrk`` package; ``require_wrk`` installs it with apt-get when run as root (like the
Makefile's promtool target) and otherwise raises ``BenchError`` saying how to install it.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.errors import DynAdapterError

#: What the Lua ``done`` prints before its JSON, so that wrk's own report around it is skipped.
RESULT_MARK = "DYNADAPTER-WRK-RESULT "
#: wrk's per-request timeout: a saturated full-depth server answers in well under a second.
TIMEOUT_S = 60
#: wrk threads (event loops): one loop keeps 64 connections busy at the few hundred requests/s a CPU server
#: answers, and a second would take a core's share from the servers on a small machine.
THREADS = 1

LUA = r"""
-- Written by dynadapter.bench.lab.wrk: cycle the request bodies, count non-2xx answers, print the
-- latency histogram as JSON.
local folder, count, method, path, content_type = %(folder)s, %(count)d, %(method)s, %(path)s, %(content_type)s
local threads, requests, next_index = {}, {}, 0
non2xx = 0 -- a global: done() reads each thread's with thread:get

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local headers = {["Content-Type"] = content_type}
  for i = 0, count - 1 do
    local file = assert(io.open(string.format("%%s/%%d.body", folder, i), "rb"))
    requests[i] = wrk.format(method, path, headers, file:read("*a"))
    file:close()
  end
  -- Each thread starts at another image, so that threads do not send the same image at once.
  next_index = (thread_index or 0) %% count
end

function request()
  local body = requests[next_index]
  next_index = (next_index + 1) %% count
  return body
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, _)
  local non = 0
  for _, thread in ipairs(threads) do
    non = non + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  local buckets = {}
  for i = 1, #latency do
    local value, n = latency(i)
    table.insert(buckets, string.format("[%%d,%%d]", value, n))
  end
  io.write(string.format(
    '%(mark)s{"responses":%%d,"duration_us":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,"write":%%d,"timeout":%%d,'
      .. '"latency_us":[%%s]}\n',
    summary.requests, summary.duration, non, e.connect, e.read, e.write, e.timeout, table.concat(buckets, ",")))
end
"""


class BenchError(DynAdapterError):
    """A benchmark cannot run on this machine as asked (a tool is missing)."""


@dataclass(frozen=True)
class WrkRound:
    """One wrk run: ``responses`` answered by the server (``non2xx`` of them not 2xx), socket errors by kind,
    ``seconds`` it ran and wrk's latency histogram as (microseconds, count) pairs (it leaves out a response that
    ends after the deadline)."""

    responses: int
    seconds: float
    non2xx: int
    socket_errors: dict[str, int]
    latency_us: list[tuple[int, int]] = field(default_factory=list)

    @property
    def requests(self) -> int:
        """Requests sent that ended: the responses and those that failed on the socket (connect, timeout)."""
        return self.responses + self.socket_errors["connect"] + self.socket_errors["timeout"]

    @property
    def errors(self) -> int:
        """Requests without a 2xx answer: non-2xx responses and every socket error."""
        return self.non2xx + sum(self.socket_errors.values())

    @property
    def answered(self) -> int:
        return max(self.requests - self.errors, 0)


def require_wrk() -> str:
    """wrk's path; installed with apt-get where missing and this process is root. ``BenchError`` otherwise."""
    found = shutil.which("wrk")
    if found is None and shutil.which("apt-get") and _is_root():
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": False}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)  # type: ignore[call-overload]
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            **quiet,  # type: ignore[call-overload]
        )
        found = shutil.which("wrk")
    if found is None:
        raise BenchError(
            "the serving benchmarks send load with wrk: install it (apt-get install wrk, brew install wrk)"
        )
    return found


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string with ASCII escapes is a valid Lua string literal


def lua_script(folder: Path, count: int, path: str, content_type: str, method: str = "POST") -> str:
    """The Lua script cycling ``count`` bodies ``folder/<i>.body`` as ``method path`` requests."""
    return LUA % {
        "folder": _lua_string(str(folder)),
        "count": count,
        "method": _lua_string(method),
        "path": _lua_string(path),
        "content_type": _lua_string(content_type),
        "mark": RESULT_MARK,
    }


def parse_output(stdout: str) -> WrkRound:
    """The result line the script's ``done`` printed in wrk's output; ``BenchError`` where there is none."""
    line = next((line for line in stdout.splitlines() if line.startswith(RESULT_MARK)), None)
    if line is None:
        raise BenchError(f"wrk printed no result (is it wrk 4 with LuaJIT?): {stdout[-2000:]}")
    raw = json.loads(line.removeprefix(RESULT_MARK))
    return WrkRound(
        responses=raw["responses"],
        seconds=raw["duration_us"] / 1e6,
        non2xx=raw["non2xx"],
        socket_errors={kind: raw[kind] for kind in ("connect", "read", "write", "timeout")},
        latency_us=[(int(value), int(n)) for value, n in raw["latency_us"]],
    )


def run_wrk(
    url: str, bodies: Sequence[bytes], content_type: str, connections: int, duration_s: float, *, wrk: str = "wrk"
) -> WrkRound:
    """``connections`` connections sending ``bodies`` (cycled) to ``url`` for ``duration_s`` rounded up to whole
    seconds (wrk counts whole seconds), after ``warm_up``. ``BenchError`` if wrk fails."""
    from urllib.parse import urlsplit

    warm_up(url, bodies, content_type, connections)
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    with tempfile.TemporaryDirectory(prefix="dynadapter-wrk-") as work:
        folder = Path(work)
        for i, body in enumerate(bodies):
            (folder / f"{i}.body").write_bytes(body)
        script = folder / "cycle.lua"
        script.write_text(lua_script(folder, len(bodies), path, content_type))
        argv = [
            *(wrk, "--latency", "-t", str(min(THREADS, connections)), "-c", str(connections)),
            *("-d", f"{max(1, math.ceil(duration_s))}s", "--timeout", f"{TIMEOUT_S}s", "-s", str(script)),
            f"{parts.scheme}://{parts.netloc}",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + TIMEOUT_S + 30, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr[-2000:]}")
    return parse_output(done.stdout)


def warm_up(url: str, bodies: Sequence[bytes], content_type: str, connections: int) -> None:
    """One untimed request per connection (at most 8), at once, before a timed run: a server just thawed
    (``lab.process.awake``) wakes its threads and workers on these rather than on the first timed requests.
    Their answers are not judged; a failure is left for the timed run to count."""
    import concurrent.futures

    import httpx

    def one(i: int) -> None:
        try:
            httpx.post(url, content=bodies[i % len(bodies)], headers={"content-type": content_type}, timeout=TIMEOUT_S)
        except httpx.HTTPError:
            pass

    count = min(connections, 8)
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(one, range(count)))


def percentile_ms(latency_us: Sequence[tuple[int, int]], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of a latency histogram, in ms (numpy's linear rule); None when empty."""
    if not latency_us:
        return None
    values = np.array([value for value, _ in latency_us], dtype=np.float64)
    counts = np.array([n for _, n in latency_us], dtype=np.int64)
    return float(np.percentile(np.repeat(values, counts), q)) / 1000


def summarize_rounds(name: str, concurrency: int, rounds: Sequence[WrkRound]) -> dict[str, Any]:
    """A results row of one (variant, concurrency) over its wrk rounds, in ``lab.load.summarize``'s shape
    (``lab.rows.LoadRow``) plus ``p99_ms`` and the errors by kind (``non2xx`` answers, wrk's socket errors:
    connect, read, write, timeout): latencies of every response of every round, in ms; throughput in 2xx answers
    per second over all rounds and per round."""
    merged: dict[int, int] = {}
    for one in rounds:
        for value, n in one.latency_us:
            merged[value] = merged.get(value, 0) + n
    histogram = sorted(merged.items())
    seconds = sum(one.seconds for one in rounds)
    answered = sum(one.answered for one in rounds)
    return {
        "variant": name,
        "concurrency": concurrency,
        "requests": sum(one.requests for one in rounds),
        "errors": sum(one.errors for one in rounds),
        "errors_by_kind": {
            "non2xx": sum(one.non2xx for one in rounds),
            **{
                kind: sum(one.socket_errors[kind] for one in rounds) for kind in ("connect", "read", "write", "timeout")
            },
        },
        "p50_ms": percentile_ms(histogram, 50),
        "p95_ms": percentile_ms(histogram, 95),
        "p99_ms": percentile_ms(histogram, 99),
        "throughput_rps": answered / seconds if seconds else None,
        "throughput_rps_rounds": [one.answered / one.seconds for one in rounds if one.seconds],
        "load": "wrk",
    }
