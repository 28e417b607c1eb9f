"""Load over the OIP gRPC port: ``lab.load``'s clients and samples, with ModelInfer calls instead of /classify.

``measure`` and ``answer_every_image`` take the server's gRPC address (host:port) and a model name and
return ``lab.load.Sample``s, so that ``lab.load.summarize`` and ``summarize_answers`` make the same rows
of results.json. Each call sends one image as the input ``image`` (BYTES [1], in raw_input_contents as
tritonclient sends it) with the knob as request parameters; one grpc.aio channel (one HTTP/2
connection) carries every client, as a gRPC client library would. grpc and the service's message
classes are imported inside functions: the ``dynadapter`` parser imports the benchmarks.

``dynadapter bench serve``'s ``balanced-grpc`` variant is timed and answered by these clients
(bench/serving/grpc_rounds.py). ``compare`` (``python -m dynadapter.bench.lab.grpc_load``) measures REST
against gRPC on one server, the same model and images, without the rest of the bench.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.bench.lab import load as rest_load
from dynadapter.bench.lab.images import BOUNDARY, BenchImages
from dynadapter.bench.lab.load import REQUEST_TIMEOUT_S, Measured, Sample, log, summarize

_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
_LENGTH = struct.Struct("<I")


def image_of(body: bytes) -> bytes:
    """The encoded image inside one of ``lab.images``' multipart bodies (``multipart_body``'s inverse)."""
    head_end = body.index(b"\r\n\r\n") + 4
    if not body.endswith(_TAIL):
        raise ValueError("not a body of lab.images.multipart_body")
    return body[head_end : -len(_TAIL)]


class _Caller:
    """ModelInfer on one channel, for ``model`` with ``parameters`` (the knob: threshold, mode or budget)."""

    def __init__(self, channel: Any, model: str, parameters: dict[str, Any]) -> None:
        from dynadapter.service.grpc.protocol import METHODS, path

        request_type, response_type = METHODS["ModelInfer"]
        self._infer = channel.unary_unary(
            path("ModelInfer"),
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        self._template = request_type(model_name=model)
        self._template.inputs.add(name="image", datatype="BYTES", shape=[1])
        for key, value in parameters.items():
            parameter = self._template.parameters[key]
            if isinstance(value, str):
                parameter.string_param = value
            else:
                parameter.double_param = float(value)

    async def __call__(self, images: list[bytes], targets: list[int], index: int) -> Sample:
        import grpc

        image = index % len(images)
        request = type(self._template)()
        request.CopyFrom(self._template)
        request.raw_input_contents.append(_LENGTH.pack(len(images[image])) + images[image])
        start = time.perf_counter()
        try:
            response = await self._infer(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            log.warning("ModelInfer failed: %s %s", err.code().name, (err.details() or "")[:200])
            return Sample(time.perf_counter() - start, ok=False, at=start, image=image)
        seconds = time.perf_counter() - start
        answer = _answer(response)
        correct = answer["class_id"] == targets[image]
        return Sample(
            seconds, ok=True, correct=correct, gflops=answer["gflops"]["used"], at=start, image=image, answer=answer
        )


def _answer(response: Any) -> dict[str, Any]:
    """One image's answer in /classify's terms (class_id, confidence, exit, gflops.used)."""
    raw = dict(zip((o.name for o in response.outputs), response.raw_output_contents, strict=True))
    probabilities = np.frombuffer(raw["probabilities"], dtype="<f4")
    reason = raw["exit_reason"][_LENGTH.size :].decode()
    return {
        "class_id": int(probabilities.argmax()),
        "confidence": float(probabilities.max()),
        "exit": {"index": int(np.frombuffer(raw["exit_index"], dtype="<i4")[0])},
        "exit_reason": reason,
        "gflops": {"used": float(np.frombuffer(raw["gflops"], dtype="<f4")[0])},
    }


async def _load(call: _Caller, images: BenchImages, concurrency: int, requests: float, deadline: float) -> list[Sample]:
    """``concurrency`` clients back to back, sharing ``requests`` numbers until ``deadline`` (perf_counter)."""
    encoded = [image_of(body) for body in images.bodies]
    sent = 0

    async def client() -> list[Sample]:
        nonlocal sent
        samples = []
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            samples.append(await call(encoded, images.targets, sent - 1))
        return samples

    per_client = await asyncio.gather(*(client() for _ in range(concurrency)))
    return [sample for samples in per_client for sample in samples]


def _channel(address: str) -> Any:
    import grpc

    return grpc.aio.insecure_channel(address, options=[("grpc.max_receive_message_length", -1)])


async def measure(
    address: str,
    model: str,
    images: BenchImages,
    concurrency: int,
    requests: int,
    duration_s: float,
    parameters: dict[str, Any] | None = None,
) -> tuple[list[Sample], float]:
    """``concurrency`` clients back to back until ``requests`` are sent or ``duration_s`` passed (as
    ``lab.load.measure``); one untimed call per client first, to open the channel and wake the server."""
    async with _channel(address) as channel:
        call = _Caller(channel, model, parameters or {})
        await _load(call, images, concurrency, concurrency, math.inf)
        start = time.perf_counter()
        samples = await _load(call, images, concurrency, requests, start + duration_s)
        return samples, time.perf_counter() - start


async def answer_every_image(
    address: str, model: str, images: BenchImages, concurrency: int, parameters: dict[str, Any] | None = None
) -> list[Sample]:
    """Every image once (as ``lab.load.answer_every_image``): accuracy and GFLOPs over gRPC."""
    async with _channel(address) as channel:
        return await _load(_Caller(channel, model, parameters or {}), images, concurrency, len(images.bodies), math.inf)


def compare(
    model_repo: Path, model: str, images: BenchImages, concurrencies: list[int], requests: int, duration_s: float
) -> list[dict[str, Any]]:
    """One `dynadapter serve` with its gRPC port; for each concurrency, ``lab.load``'s row over REST (/classify,
    multipart) and over gRPC (ModelInfer), measured one after the other, each with its ``transport``."""
    from dynadapter.bench.lab.process import ServerProcess, free_port
    from dynadapter.bench.lab.servers import ServerOptions, service_argv

    grpc_port = free_port()
    argv = [
        *service_argv(ServerOptions(), "cpu"),
        "--model-repo",
        str(model_repo),
        "--models",
        model,
        "--model-name",
        model,
    ]
    server = ServerProcess("service", [*argv, "--grpc-port", str(grpc_port)])  # the last --grpc-port wins
    rows = []
    try:
        server.wait_ready()
        address = f"127.0.0.1:{grpc_port}"
        for concurrency in concurrencies:
            rest = asyncio.run(rest_load.measure(server.classify_url, images, concurrency, requests, duration_s))
            grpc = asyncio.run(measure(address, model, images, concurrency, requests, duration_s))
            for transport, (samples, seconds) in (("rest", rest), ("grpc", grpc)):
                row = summarize(f"{model}-{transport}", concurrency, Measured(samples, [(len(samples), seconds)]))
                rows.append({"transport": transport} | row)
    finally:
        server.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    """`python -m dynadapter.bench.lab.grpc_load`: REST against gRPC on one server, rows as JSON lines."""
    import argparse
    import json

    from dynadapter.bench.lab.images import bench_images
    from dynadapter.cpu import this_cpu

    parser = argparse.ArgumentParser(prog="python -m dynadapter.bench.lab.grpc_load", description=main.__doc__)
    parser.add_argument("--model-repo", type=Path, default=Path("var/model_repo"))
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--run", type=Path, default=Path("demo/dinov2-mnist"), help="run whose test split is sent")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    images = bench_images(args.run, args.images)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    rows = compare(args.model_repo, args.model, images, concurrencies, args.requests, args.duration_s)
    cpu = this_cpu().model
    for row in rows:
        print(json.dumps({"cpu": cpu} | row))


if __name__ == "__main__":
    main()
