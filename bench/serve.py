"""``dynadapter bench serve``: latency and throughput of this service against what a user would deploy without it.

Variants, each a real server process on a free loopback port, all fed the same PNG bytes (the whole
test split of the run's data set by default, ``--images`` to send fewer) as multipart uploads:

- ``fast``, ``balanced``, ``accurate``: this service chaining the per-stage segments, at each mode;
- ``equal-accuracy``: the same server at the cheapest threshold of the model's calibration table
  whose accuracy on the images sent is within 0.5 points of the static graph's
  (``dynadapter.bench.equal_accuracy``): the throughput targets against the full-depth deployments
  are judged there, so that a speed-up is never bought with accuracy;
- ``threshold-1``: the same server with ``threshold=1`` (no early exit: the cost of chaining alone);
- ``static``: the same service serving the model as one static ONNX graph (full depth, last exit);
- ``litserve-onnx``, ``litserve-torch``: that graph behind LitServe with its own dynamic batching, on
  onnxruntime and in PyTorch eager mode (``dynadapter.bench.litserve_apps``).

Every server batches at most ``--max-batch-size`` images, waits at most ``--max-wait-ms`` for a batch
to fill and gives its runtime ``--threads`` intra-op threads. One thread each by default: with each
runtime's own default (a spinning thread per core), PyTorch behind LitServe's two processes stalled
for 0.2-0.7 s per request on a shared 2-core machine, which would make that baseline a straw man.

Each (variant, concurrency) is measured ``--rounds`` times with the variants in a rotated order, so
that drifts in a shared machine's load fall on all of them alike; only the server under measurement
runs, the others are frozen with SIGSTOP (idle LitServe workers poll and would take CPU from it).
Ratios come from numbers measured side by side in one run. Before the timed rounds every variant
classifies each image once, which warms it up and gives its accuracy and GFLOPs on identical images.
On a GPU machine ``--providers cuda`` (or ``auto``) puts every server's model on the GPU.

Third-party imports sit inside functions: the ``dynadapter`` parser imports this module, also in the
serving image, which has neither httpx nor torch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from dynadapter import options
from dynadapter.bench.results import fmt
from dynadapter.errors import DataError, RunDirError
from dynadapter.options import comma_separated

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

#: serve_photos: `--photos` (bench/serve_photos.py); serve_precision: `--precisions` (bench/precision.py)
RESULT_KEYS = ("serve", "serve_photos", "serve_precision")
#: Where `make serve` builds the demo's model repository (relative to the working directory, the checkout).
DEMO_MODEL_REPO = Path("var") / "model_repo"
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 180.0
BOUNDARY = "dynadapter-bench-boundary"
HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass(frozen=True)
class Variant:
    server: str  # key of the server process that answers it
    query: str
    description: str


VARIANTS = {
    "fast": Variant("cascade", "?mode=fast", "this service, per-stage segments, mode fast"),
    "balanced": Variant("cascade", "?mode=balanced", "this service, per-stage segments, mode balanced"),
    "accurate": Variant("cascade", "?mode=accurate", "this service, per-stage segments, mode accurate"),
    "equal-accuracy": Variant(
        "cascade",
        "?threshold={threshold}",
        "this service, per-stage segments, the cheapest calibrated threshold within 0.5 points of the static "
        "graph's accuracy on the images sent",
    ),
    "threshold-1": Variant("cascade", "?threshold=1", "this service, per-stage segments, threshold 1 (no early exit)"),
    "static": Variant("static", "", "this service, one static ONNX graph (full depth, last exit)"),
    "litserve-onnx": Variant("litserve-onnx", "", "LitServe + onnxruntime, the static graph"),
    "litserve-torch": Variant("litserve-torch", "", "LitServe + PyTorch eager, the static model"),
}


@dataclass(frozen=True)
class Target:
    """``numerator``'s ``metric`` over ``denominator``'s, against ``bound``, at every or the top concurrency."""

    numerator: str
    denominator: str
    metric: str  # "p50_ms" or "throughput_rps"
    at_most: bool  # the ratio must be <= bound (else >= bound)
    bound: float
    top_only: bool

    @property
    def text(self) -> str:
        name = "p50" if self.metric == "p50_ms" else "throughput"
        return f"{name} {self.numerator} / {self.denominator} {'<=' if self.at_most else '>='} {self.bound:g}"


TARGETS = (
    # Chaining segments at threshold 1 costs at most 5% over the single graph.
    Target("threshold-1", "static", "p50_ms", True, 1.05, False),
    Target("threshold-1", "static", "throughput_rps", False, 0.95, False),
    # Early exit pays: at balanced, at most 0.6x the latency of running every image to the end.
    Target("balanced", "threshold-1", "p50_ms", True, 0.6, False),
    # Under load, at equal accuracy, the service serves at least 1.8x what the full-depth deployments serve.
    Target("equal-accuracy", "static", "throughput_rps", False, 1.8, True),
    Target("equal-accuracy", "litserve-onnx", "throughput_rps", False, 1.8, True),
    Target("equal-accuracy", "litserve-torch", "throughput_rps", False, 1.8, True),
)


def _subset(choices: Callable[[], Sequence[str]]) -> Callable[[list[str]], list[str]]:
    def check(items: list[str]) -> list[str]:
        unknown = [item for item in items if item not in choices()]
        if unknown or not items:
            raise ValueError(f"expected a comma-separated subset of {list(choices())}")
        return items

    return check


def _precision_servers() -> Sequence[str]:
    from dynadapter.bench.precision import SERVERS  # bench/precision.py builds on this module

    return list(SERVERS)


CommaList = BeforeValidator(comma_separated)


class ServerOptions(BaseModel):
    """How every server of a benchmark batches and runs its model (the flags shared by the serving benchmarks)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, description="every server's batch limit")
    max_wait_ms: float = Field(5.0, ge=0, description="every server's wait for a batch to fill, in ms")
    threads: int = Field(
        1,
        ge=0,
        description="intra-op threads of every server's runtime; 0: each runtime's default, one per core "
        "(bench/serve.py's docstring)",
    )
    providers: Literal["cpu", "auto", "cuda"] = Field("cpu", description="where the models run, for every server")


class ServeBenchConfig(ServerOptions):
    """What `dynadapter bench serve` measures and how; its flags are generated from these fields."""

    run_dir: Path | None = Field(
        None, description="the trained run (default: the demo's, demo/dinov2-mnist); the baselines are built from it"
    )
    model_repo: Path | None = Field(
        None,
        description="a model repository holding the export of --run-dir (default: for the demo run, the one "
        "`dynadapter demo build` writes to var/model_repo; else --run-dir is exported afresh)",
    )
    model_name: str | None = Field(None, description="model in --model-repo (default: the only or first one)")
    concurrency: Annotated[list[Annotated[int, Field(ge=1)]], CommaList] = Field(
        [1, 8, 32], min_length=1, description="clients sending back to back, comma-separated"
    )
    duration: float = Field(5.0, gt=0, description="seconds per measurement, at most")
    requests: int = Field(2000, ge=1, description="requests per measurement, at most")
    images: int | None = Field(
        None, ge=1, description="test images sent, cycled; each variant classifies each once (default: all)"
    )
    rounds: int = Field(3, ge=1, description="measurements of each variant and concurrency")
    variants: Annotated[list[str], CommaList, AfterValidator(_subset(lambda: list(VARIANTS)))] = Field(
        list(VARIANTS), description="comma-separated subset of the variants"
    )
    docs: Path = Field(Path("docs"), description="where results.{json,md} go")
    photos: bool = Field(
        False,
        description="camera-sized photos instead of the test split: decoders, servers, peak RSS, accuracy "
        "(bench/serve_photos.py)",
    )
    baseline_site: Path | None = Field(
        None,
        description="with --photos: a folder another build of this service was installed into "
        "(pip install --target), measured beside this one",
    )
    precisions: Annotated[
        list[str] | None, CommaList, AfterValidator(lambda v: v and _subset(_precision_servers)(v))
    ] = Field(
        None,
        description="instead of the variants: the service at each of these precision/backend servers "
        "(comma-separated), every mode (bench/precision.py)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="latency and throughput of the service against a static graph and LitServe",
        description=__doc__.splitlines()[0],
    )
    options.add_arguments(p, ServeBenchConfig)


def run(args: argparse.Namespace) -> None:
    serve_benchmark(options.from_args(ServeBenchConfig, args))


def serve_benchmark(config: ServeBenchConfig) -> None:
    """Run the benchmark `config` describes and write its section of docs/results.{json,md}."""
    from dynadapter.bench.results import update_results

    if config.photos:
        from dynadapter.bench.serve_photos import run_photos

        return run_photos(config)
    if config.precisions:
        from dynadapter.bench import precision

        return precision.run(config)

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="dynadapter-bench-serve-") as work:
        inputs = prepare_inputs(config, Path(work))
        images = bench_images(inputs.run_dir, config.images)
        point = equal_accuracy_point(inputs, images, config)
        variants = resolved_variants(point)
        with contextlib.ExitStack() as stack:
            servers = start_servers(stack, inputs, config)
            answers, measured = asyncio.run(measure_all(servers, images, config, variants))
        section = report(answers, measured, inputs, images, config, load_before)
        if point is not None:
            section["equal_accuracy"] = {**point, "served": equal_accuracy_served(section["answers"])}
    update_results(config.docs, {"serve": section})
    print(result_table(section))


def equal_accuracy_point(inputs: BenchInputs, images: BenchImages, config: ServeBenchConfig) -> dict[str, Any] | None:
    """The ``equal-accuracy`` variant's threshold, from the cascade's calibration table (None if not asked for)."""
    if "equal-accuracy" not in config.variants:
        return None
    from dynadapter.bench.equal_accuracy import operating_point
    from dynadapter.contract.model_repository import load_model

    table = load_model(inputs.model_repo, inputs.model_name).manifest.calibration.table
    point = operating_point(inputs.run_dir, sorted({float(row["threshold"]) for row in table}), len(images.bodies))
    log.info("equal accuracy: threshold %s (%s)", point["threshold"], point)
    return point


def resolved_variants(point: dict[str, Any] | None) -> dict[str, Variant]:
    """``VARIANTS`` with the equal-accuracy query filled in."""
    if point is None:
        return dict(VARIANTS)
    variant = VARIANTS["equal-accuracy"]
    query = variant.query.format(threshold=f"{point['threshold']:.6g}")
    return {**VARIANTS, "equal-accuracy": Variant(variant.server, query, variant.description)}


def equal_accuracy_served(answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The served accuracy of the equal-accuracy point against the served static graph's, same images."""
    ours, static = answers.get("equal-accuracy", {}), answers.get("static", {})
    accuracy, reference = ours.get("accuracy"), static.get("accuracy")
    within = None if accuracy is None or reference is None else accuracy >= reference - 0.005 - 1e-12
    return {"accuracy": accuracy, "static_accuracy": reference, "within_tolerance": within}


# -- inputs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchInputs:
    run_dir: Path
    model_repo: Path
    model_name: str
    static_run: Path  # the static graph as a run directory (PyTorch) ...
    static_repo: Path  # ... and as a one-segment model repository (onnxruntime)


def prepare_inputs(config: ServeBenchConfig, work: Path) -> BenchInputs:
    """Resolve the run and the model repository; build the static graph from the run."""
    from dynadapter.bench.static_graph import export_static_graph
    from dynadapter.contract.model_repository import load_model
    from dynadapter.export.demo import DEMO_RUNS, build_demo_repo
    from dynadapter.export.exporter import export_run

    run_dir = config.run_dir or next(iter(DEMO_RUNS.values()))  # the demo's run (demo/dinov2-mnist)
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}: pass --run-dir (a `dynadapter train` output)")
    demo_name = next((name for name, run in DEMO_RUNS.items() if run.resolve() == run_dir.resolve()), None)
    if config.model_repo is not None:
        repo, name = config.model_repo, config.model_name
    elif demo_name is not None:
        repo, name = build_demo_repo(DEMO_MODEL_REPO), demo_name
    else:
        log.info("exporting %s into a model repository for the bench", run_dir)
        repo, name = work / "repo", None
        export_run(run_dir, repo)
    name = load_model(repo, name).manifest.name
    log.info("building the static single-graph baseline from %s", run_dir)
    static_run, static_repo = export_static_graph(run_dir, work / "static", name)
    return BenchInputs(run_dir, repo, name, static_run, static_repo)


@dataclass(frozen=True)
class BenchImages:
    bodies: list[bytes]  # multipart/form-data bodies, field "file", one PNG each
    targets: list[int]
    data: str


def bench_images(run_dir: Path, count: int | None) -> BenchImages:
    """The first ``count`` images of the run's test split (None: all of them), as uploads (builtin arrays
    as PNG, files as they are), with their classes."""
    from dynadapter.training.data import run_split
    from dynadapter.training.run_dir import read_config

    config = read_config(run_dir)
    split = run_split(run_dir, config, "test")  # the run's own test split: no training image is sent
    if not len(split):
        raise DataError(f"the test split of {config.data} is empty: no images to send")
    n = len(split) if count is None else min(count, len(split))
    bodies = [multipart_body(split.encoded(i)) for i in range(n)]
    return BenchImages(bodies, [int(t) for t in split.targets[:n]], config.data)


def multipart_body(png: bytes) -> bytes:
    # Encoded once, up front: the load generator shares the CPU with the servers and should spend
    # as little of it as possible per request.
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="image.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    return head.encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


# -- servers -----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server on a free loopback port, in its own process group (LitServe forks workers); output to a file."""

    def __init__(self, name: str, argv: list[str], ready_path: str, classify_path: str) -> None:
        port = free_port()
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.classify_url = self.url + classify_path
        self._ready_url = self.url + ready_path
        self._log = tempfile.TemporaryFile("w+")
        # A caller's DYNADAPTER_* variables must not configure one server and not the others.
        env = {key: value for key, value in os.environ.items() if not key.startswith("DYNADAPTER_")}
        self.process = subprocess.Popen(
            [*argv, "--port", str(port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.name} server exited: {self.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server was not ready after {timeout_s:.0f} s")
            try:
                if httpx.get(self._ready_url, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)

    def pause(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the whole group (LitServe's workers outlive a lone parent), SIGKILL if it lingers."""
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
        self._log.close()

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()


def service_argv(config: ServerOptions, providers: str) -> list[str]:
    """`dynadapter serve` on loopback with the bench's runtime and batching settings (without --port,
    the model repository and the model)."""
    return [
        *(sys.executable, "-m", "dynadapter", "serve", "--host", "127.0.0.1", "--log-level", "warning"),
        *("--providers", providers, "--intra-op-threads", str(config.threads)),
        *("--max-batch-size", str(config.max_batch_size), "--max-wait-ms", str(config.max_wait_ms)),
    ]


def server_commands(inputs: BenchInputs, config: ServeBenchConfig) -> dict[str, tuple[list[str], str, str]]:
    """Server name -> (argv without --port, readiness path, classify path)."""
    batching = ["--max-batch-size", str(config.max_batch_size)]
    service = service_argv(config, config.providers)
    litserve = [
        sys.executable,
        "-m",
        "dynadapter.bench.litserve_apps",
        "--host",
        "127.0.0.1",
        "--accelerator",
        litserve_accelerator(config.providers),
        "--threads",
        str(config.threads),
        *batching,
        "--batch-timeout-s",
        str(config.max_wait_ms / 1000),
    ]
    return {
        "cascade": (
            [*service, "--model-repo", str(inputs.model_repo), "--model-name", inputs.model_name],
            "/readyz",
            "/classify",
        ),
        "static": ([*service, "--model-repo", str(inputs.static_repo)], "/readyz", "/classify"),
        "litserve-onnx": ([*litserve, "onnx", str(inputs.static_repo)], "/health", "/predict"),
        "litserve-torch": ([*litserve, "torch", str(inputs.static_run)], "/health", "/predict"),
    }


def litserve_accelerator(providers: str) -> str:
    """LitServe on the device the service picks for the same preference, so that both run on the same hardware."""
    from dynadapter.service.segment_runner import CUDA, select_providers

    return "cuda" if select_providers(providers)[0] == CUDA else "cpu"


def start_servers(
    stack: contextlib.ExitStack, inputs: BenchInputs, config: ServeBenchConfig
) -> dict[str, ServerProcess]:
    """Start the servers the chosen variants need and wait for them."""
    needed = {VARIANTS[name].server for name in config.variants}
    return launch(stack, {name: spec for name, spec in server_commands(inputs, config).items() if name in needed})


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


# -- load --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it."""

    seconds: float
    ok: bool
    correct: bool = False
    gflops: float | None = None  # what this service reports it used; LitServe does not say
    at: float = 0.0  # when it was sent (time.perf_counter, s)
    image: int = -1  # index into BenchImages.bodies
    answer: dict[str, Any] | None = None  # the 200 response's JSON


@dataclass
class Measured:
    """Every sample of one (variant, concurrency) over all rounds, and each round's (answered, seconds)."""

    samples: list[Sample] = field(default_factory=list)
    rounds: list[tuple[int, float]] = field(default_factory=list)

    def add(self, samples: list[Sample], seconds: float) -> None:
        self.samples += samples
        self.rounds.append((sum(sample.ok for sample in samples), seconds))


class _Budget:
    """Hands out request numbers until ``requests`` are out or ``deadline`` (perf_counter) passed."""

    def __init__(self, requests: int, deadline: float) -> None:
        self._requests, self._deadline, self._sent = requests, deadline, 0

    def take(self) -> int | None:
        if self._sent >= self._requests or time.perf_counter() >= self._deadline:
            return None
        self._sent += 1
        return self._sent - 1


async def _request(client: httpx.AsyncClient, url: str, images: BenchImages, index: int) -> Sample:
    import httpx

    image = index % len(images.bodies)
    start = time.perf_counter()
    try:
        response = await client.post(url, content=images.bodies[image], headers=HEADERS)
        seconds = time.perf_counter() - start
    except httpx.HTTPError as err:
        log.warning("request to %s failed: %r", url, err)
        return Sample(time.perf_counter() - start, ok=False, at=start, image=image)
    if response.status_code != 200:
        log.warning("%s answered %d: %s", url, response.status_code, response.text[:200])
        return Sample(seconds, ok=False, at=start, image=image)
    body = response.json()
    gflops = body["gflops"]["used"] if "gflops" in body else None
    correct = body["class_id"] == images.targets[image]
    return Sample(seconds, ok=True, correct=correct, gflops=gflops, at=start, image=image, answer=body)


async def _send(client: httpx.AsyncClient, url: str, images: BenchImages, budget: _Budget) -> list[Sample]:
    """One client: requests back to back while the budget lasts."""
    samples = []
    while (index := budget.take()) is not None:
        samples.append(await _request(client, url, images, index))
    return samples


async def _load(
    client: httpx.AsyncClient, url: str, images: BenchImages, concurrency: int, budget: _Budget
) -> list[Sample]:
    """``concurrency`` clients sharing one budget; every sample, in no particular order."""
    per_client = await asyncio.gather(*(_send(client, url, images, budget) for _ in range(concurrency)))
    return [sample for samples in per_client for sample in samples]


def _http_client(concurrency: int) -> httpx.AsyncClient:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S)


async def measure(
    url: str, images: BenchImages, concurrency: int, requests: int, duration_s: float
) -> tuple[list[Sample], float]:
    """``concurrency`` clients back to back until ``requests`` are sent or ``duration_s`` passed.

    One untimed request per client first: it opens the connections and wakes the server's threads.
    """
    async with _http_client(concurrency) as client:
        await _load(client, url, images, concurrency, _Budget(concurrency, math.inf))
        start = time.perf_counter()
        samples = await _load(client, url, images, concurrency, _Budget(requests, start + duration_s))
        return samples, time.perf_counter() - start


async def answer_every_image(url: str, images: BenchImages, concurrency: int) -> list[Sample]:
    """Every image once: accuracy and GFLOPs on the same images for every variant (and the server's warm-up)."""
    async with _http_client(concurrency) as client:
        return await _load(client, url, images, concurrency, _Budget(len(images.bodies), math.inf))


async def measure_all(
    servers: dict[str, ServerProcess],
    images: BenchImages,
    config: ServeBenchConfig,
    variants: dict[str, Variant] = VARIANTS,
) -> tuple[dict[str, list[Sample]], dict[tuple[str, int], Measured]]:
    """Each variant's answers to every image, then the timed rounds, one server awake at a time."""
    for server in servers.values():
        server.pause()
    answers = {}
    for name in config.variants:
        with _awake(servers[variants[name].server]) as server:
            answers[name] = await answer_every_image(
                server.classify_url + variants[name].query, images, max(config.concurrency)
            )
    measured = {(v, c): Measured() for c in config.concurrency for v in config.variants}
    for round_index in range(config.rounds):
        for position, concurrency in enumerate(config.concurrency):
            shift = (round_index * len(config.concurrency) + position) % len(config.variants)
            for name in [*config.variants[shift:], *config.variants[:shift]]:
                with _awake(servers[variants[name].server]) as server:
                    samples, seconds = await measure(
                        server.classify_url + variants[name].query,
                        images,
                        concurrency,
                        config.requests,
                        config.duration,
                    )
                measured[name, concurrency].add(samples, seconds)
                log.info(
                    "round %d/%d, %s at concurrency %d: %d requests in %.1f s",
                    round_index + 1,
                    config.rounds,
                    name,
                    concurrency,
                    len(samples),
                    seconds,
                )
    return answers, measured


@contextlib.contextmanager
def _awake(server: ServerProcess) -> Iterator[ServerProcess]:
    server.resume()
    try:
        yield server
    finally:
        server.pause()


# -- report ------------------------------------------------------------------------------------------------------


def summarize(name: str, concurrency: int, measured: Measured) -> dict[str, Any]:
    ok = [s for s in measured.samples if s.ok]
    latencies = np.array([s.seconds for s in ok]) * 1000
    seconds = sum(seconds for _, seconds in measured.rounds)
    return {
        "variant": name,
        "concurrency": concurrency,
        "requests": len(measured.samples),
        "errors": len(measured.samples) - len(ok),
        "p50_ms": float(np.percentile(latencies, 50)) if ok else None,
        "p95_ms": float(np.percentile(latencies, 95)) if ok else None,
        "throughput_rps": len(ok) / seconds if seconds else None,
        # The spread over rounds shows how much the machine's load moved the numbers.
        "throughput_rps_rounds": [answered / seconds for answered, seconds in measured.rounds if seconds],
    }


def summarize_answers(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    gflops = [s.gflops for s in ok if s.gflops is not None]
    return {
        "images": len(samples),
        "errors": len(samples) - len(ok),
        "accuracy": sum(s.correct for s in ok) / len(ok) if ok else None,
        "gflops_per_image": float(np.mean(gflops)) if gflops else None,
    }


def check_targets(rows: list[dict[str, Any]], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    """Each target at each concurrency it applies to (the top one: "under load"), where both variants ran."""
    by = {(row["variant"], row["concurrency"]): row for row in rows}
    checks = []
    for target in TARGETS:
        for concurrency in [max(concurrencies)] if target.top_only else concurrencies:
            ratio = _ratio(
                by.get((target.numerator, concurrency)), by.get((target.denominator, concurrency)), target.metric
            )
            if ratio is None:
                continue
            met = ratio <= target.bound if target.at_most else ratio >= target.bound
            checks.append(
                {"target": target.text, "concurrency": concurrency, "ratio": ratio, "bound": target.bound, "met": met}
            )
    return checks


def report(
    answers: dict[str, list[Sample]],
    measured: dict[tuple[str, int], Measured],
    inputs: BenchInputs,
    images: BenchImages,
    config: ServeBenchConfig,
    load_before: float,
) -> dict[str, Any]:
    from dynadapter.contract.model_repository import load_model

    rows = [summarize(name, c, measured[name, c]) for c in config.concurrency for name in config.variants]
    cascade = load_model(inputs.model_repo, inputs.model_name).manifest
    static = load_model(inputs.static_repo).manifest
    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(config.providers, load_before),
        "model": {
            "run_dir": str(inputs.run_dir),
            "model_repo": str(inputs.model_repo),
            "name": cascade.name,
            "exits": cascade.num_exits,
            "gflops_full": cascade.gflops_full,
            "static_gflops": static.gflops_full,
            "modes": {mode: choice.model_dump(exclude_none=True) for mode, choice in cascade.modes.items()},
        },
        "images": {"data": images.data, "split": "test", "count": len(images.bodies), "format": "PNG, multipart"},
        "settings": {
            "concurrency": config.concurrency,
            "duration_s": config.duration,
            "requests": config.requests,
            "rounds": config.rounds,
            "threads": config.threads,
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        },
        "variants": {name: VARIANTS[name].description for name in config.variants},
        "answers": {name: summarize_answers(samples) for name, samples in answers.items()},
        "results": rows,
        "targets": check_targets(rows, config.concurrency),
    }


def machine(providers: str, load_before: float) -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "providers": providers,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "packages": {
            name: package(name) for name in ("onnxruntime-gpu", "onnxruntime", "torch", "litserve") if package(name)
        },
    }


def _ratio(row: dict[str, Any] | None, base: dict[str, Any] | None, key: str) -> float | None:
    if not row or not base or not row[key] or not base[key]:
        return None
    return row[key] / base[key]


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def _table_rows(section: dict[str, Any]) -> list[list[str]]:
    by = {(row["variant"], row["concurrency"]): row for row in section["results"]}
    out = []
    for row in section["results"]:
        name, clients = row["variant"], row["concurrency"]
        answers = section["answers"][name]
        out.append(
            [
                name,
                str(clients),
                fmt(row["p50_ms"], 2),
                fmt(row["p95_ms"], 2),
                fmt(row["throughput_rps"]),
                _spread(row["throughput_rps_rounds"]),
                fmt(_ratio(row, by.get(("threshold-1", clients)), "p50_ms"), 2),
                fmt(_ratio(row, by.get(("static", clients)), "throughput_rps"), 2),
                fmt(answers["gflops_per_image"], 4),
                fmt(answers["accuracy"], 3),
                f"{row['requests'] - row['errors']}/{row['requests']}",
            ]
        )
    return out


HEADER = [
    "variant",
    "clients",
    "p50 ms",
    "p95 ms",
    "req/s",
    "req/s by round",
    "p50 / thr-1",
    "req/s / static",
    "GFLOPs/img",
    "accuracy",
    "answered",
]


def _target_lines(section: dict[str, Any]) -> list[str]:
    lines = []
    for check in section["targets"]:
        ratio, bound = check["ratio"], check["bound"]
        side = "over" if ratio > bound else "under"
        clients = f"{check['concurrency']} client{'s' if check['concurrency'] != 1 else ''}"
        # Four decimals: a ratio a hair over its bound (1.0504 against 1.05) must not print as equal to it.
        lines.append(
            f"{'met   ' if check['met'] else 'MISSED'} {check['target']} at {clients}: "
            f"{ratio:.4f}, {abs(ratio / bound - 1):.2%} {side} the bound"
        )
    return lines


def _equal_accuracy_text(section: dict[str, Any]) -> str:
    point = section.get("equal_accuracy")
    if not point:
        return ""
    served = point["served"]
    return (
        f"Equal accuracy: threshold {point['threshold']:.6g}, the cheapest of the {point['candidates']} thresholds "
        f"of the calibration table within 0.5 points of the static graph on these {point['images']} images: "
        f"{100 * point['accuracy']:.2f}% against {100 * point['static_accuracy']:.2f}% (PyTorch), "
        f"{point['gflops']:.4g} GFLOPs/img ({point['flops_fraction']:.0%} of full depth)"
        + ("" if point["within_tolerance"] else "; no threshold is that accurate, so the most accurate one")
        + f"; served: {fmt(_pct_or_none(served['accuracy']), 2)}% against the static graph's "
        f"{fmt(_pct_or_none(served['static_accuracy']), 2)}%."
    )


def _pct_or_none(value: float | None) -> float | None:
    return None if value is None else 100 * value


def result_table(section: dict[str, Any]) -> str:
    rows = [HEADER, *_table_rows(section)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join([*lines, "", *filter(None, [_equal_accuracy_text(section)]), *_target_lines(section)])


def _setup_text(section: dict[str, Any]) -> str:
    m, s, model, images = section["machine"], section["settings"], section["model"], section["images"]
    load = m["load_average_1m"]
    return (
        f"`dynadapter bench serve`, {section['created_utc']}: model `{model['name']}` ({model['exits']} exits; "
        f"{model['gflops_full']:.3f} GFLOPs at full depth with every early head, {model['static_gflops']:.3f} as "
        "one static graph and at threshold 1, where the segments skip their early heads); "
        f"{images['count']} test images of `{images['data']}` sent as PNG uploads. "
        f"{m['cpu_count']} CPU cores ({m['processor']}), providers `{m['providers']}`, 1-minute load average "
        f"{load['start']:.1f} at the start and {load['end']:.1f} at the end. Every server: at most "
        f"{s['max_batch_size']} images a batch, at most {s['max_wait_ms']:g} ms of waiting for one, {s['threads']} "
        f"intra-op thread(s). {s['rounds']} interleaved rounds of at most {s['duration_s']:g} s or {s['requests']} "
        "requests per variant and concurrency. `p50 / thr-1`: p50 over this service's at threshold 1; "
        "`req/s / static`: throughput over this service's on the static graph; accuracy and GFLOPs/img: "
        "every image classified once by each variant."
    )


def render_markdown(results: dict[str, Any]) -> str:
    from dynadapter.bench import precision
    from dynadapter.bench.serve_photos import render_markdown as render_photos

    parts = (_render_serve(results.get("serve")), render_photos(results), precision.render_markdown(results))
    return "\n\n".join(part for part in parts if part)


def _render_serve(section: dict[str, Any] | None) -> str:
    if not section:
        return ""
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(row) + " |" for row in _table_rows(section)]
    variants = "; ".join(f"`{name}`: {text}" for name, text in section["variants"].items())
    targets = [f"- {line}" for line in _target_lines(section)]
    equal = [_equal_accuracy_text(section), ""] if section.get("equal_accuracy") else []
    return "\n".join(
        [
            *("## Serving", "", _setup_text(section), "", *table, "", f"Variants: {variants}.", ""),
            *equal,
            *("Targets:", "", *targets),
        ]
    )
