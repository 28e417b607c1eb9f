"""``bench serve``'s gRPC variants (``Variant.protocol == "grpc"``): OIP ModelInfer from Python clients.

wrk speaks HTTP/1.1 only, so a gRPC variant's timed rounds are ``lab.grpc_load``'s clients: one grpc.aio
channel (one HTTP/2 connection, as a gRPC client library opens) carrying ``concurrency`` clients back to
back for the round's seconds, each call one image as BYTES in ``raw_input_contents`` with the variant's knob
as request parameters. ``as_round`` turns the calls into a ``lab.wrk.WrkRound``, so that
``lab.wrk.summarize_rounds`` makes the same row (requests, errors, p50/p95/p99, throughput per round) as for
the wrk variants; the row's ``load`` says ``GRPC_LOAD`` instead of ``wrk``. The latencies include the
Python client's own time on the cores the server needs, so these rows are not directly comparable with wrk's.

The server is this service with a gRPC listener: ``inputs.server_commands`` gives the cascade servers a
free ``--grpc-port`` after the bench's ``--grpc-port 0`` (the last flag wins), and ``grpc_address`` reads
it back from the server's command line. grpc is imported inside ``lab.grpc_load``'s functions.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from typing import Any, cast

from dynadapter.bench.lab import grpc_load
from dynadapter.bench.lab.images import BenchImages
from dynadapter.bench.lab.load import Sample
from dynadapter.bench.lab.process import LOOPBACK, ServerProcess
from dynadapter.bench.lab.wrk import BenchError, WrkRound

#: The ``load`` of a gRPC variant's rows (wrk's rows say ``wrk``).
GRPC_LOAD = "python-grpc"
GRPC_PORT_FLAG = "--grpc-port"


def grpc_address(server: ServerProcess) -> str:
    """``host:port`` of ``server``'s gRPC listener: the last ``--grpc-port`` of its command line, as the service's
    parser reads it. ``BenchError`` where it has none but 0 (the server was started without gRPC)."""
    argv = cast(list[str], server.process.args)  # ServerProcess starts a list of strings
    ports = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == GRPC_PORT_FLAG]
    if not ports or int(ports[-1]) == 0:
        raise BenchError(f"the {server.name} server has no gRPC port ({GRPC_PORT_FLAG} 0)")
    return f"{LOOPBACK}:{ports[-1]}"


async def answers(
    server: ServerProcess, model: str, images: BenchImages, concurrency: int, parameters: dict[str, Any]
) -> list[Sample]:
    """Every image once over ModelInfer (``grpc_load.answer_every_image``): the variant's accuracy and GFLOPs."""
    return await grpc_load.answer_every_image(grpc_address(server), model, images, concurrency, parameters)


async def timed_round(
    server: ServerProcess,
    model: str,
    images: BenchImages,
    concurrency: int,
    duration_s: float,
    parameters: dict[str, Any],
) -> WrkRound:
    """``concurrency`` clients on one channel for ``duration_s`` rounded up to whole seconds, as wrk runs
    (after one untimed call per client), as a ``WrkRound``."""
    seconds = max(1, math.ceil(duration_s))
    address = grpc_address(server)
    samples, elapsed = await grpc_load.measure(address, model, images, concurrency, sys.maxsize, seconds, parameters)
    return as_round(samples, elapsed)


def as_round(samples: list[Sample], seconds: float) -> WrkRound:
    """The calls of one round as wrk's result: every call a response, a failed one (a gRPC status other than OK)
    counted as wrk counts a non-2xx answer, and the latency histogram (microseconds -> count) of the answered
    calls, the latencies ``lab.load.summarize`` takes."""
    histogram = Counter(round(sample.seconds * 1e6) for sample in samples if sample.ok)
    return WrkRound(
        responses=len(samples),
        seconds=seconds,
        non2xx=sum(not sample.ok for sample in samples),
        socket_errors={"connect": 0, "read": 0, "write": 0, "timeout": 0},
        latency_us=sorted(histogram.items()),
    )
