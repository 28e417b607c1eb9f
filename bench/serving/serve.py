"""``dynadapter bench serve``: latency and throughput of this service against what a user would deploy without it.

Variants, each a real server process on a free loopback port, all fed the same PNG bytes (the whole
test split of the run's data set by default, ``--images`` to send fewer) as multipart uploads:

- ``fast``, ``balanced``, ``accurate``: this service chaining the per-stage segments, at each mode;
- ``equal-accuracy``: the same server at the cheapest threshold of the model's calibration table
  whose accuracy on the images sent is within 0.5 points of the static graph's
  (``dynadapter.bench.serving.equal_accuracy``): the throughput targets against the full-depth deployments
  are judged there, so that a speed-up is never bought with accuracy;
- ``threshold-1``: the same server with ``threshold=1`` (no early exit: the cost of chaining alone);
- ``static``: the same service serving the model as one static ONNX graph (full depth, last exit);
- ``litserve-onnx``, ``litserve-torch``: that graph behind LitServe with its own dynamic batching, on
  onnxruntime and in PyTorch eager mode (``dynadapter.bench.serving.litserve_apps``).
- ``balanced-oip``: this service at ``balanced`` over OIP JSON (base64 PNG in a BYTES tensor);
- ``balanced-grpc``: this service at ``balanced`` over OIP gRPC ModelInfer (the PNG as BYTES in
  ``raw_input_contents``) on the cascade server's own free ``--grpc-port``; timed by Python clients, not wrk
  (``dynadapter.bench.serving.grpc_rounds``);
- ``triton-onnx``, ``triton-int8``: NVIDIA Triton (nvidia-pytriton's tritonserver, its dynamic batcher)
  serving that graph on fp32 onnxruntime and as NNCF int8 OpenVINO IR, over the same OIP JSON,
  decoding the PNGs as this service does (``dynadapter.bench.serving.triton``).

Every server batches at most ``--max-batch-size`` images, waits at most ``--max-wait-ms`` for a batch
to fill and gives its runtime ``--threads`` intra-op threads (0, the default: the runtime's own). The
``+tuned`` rows exist because the defaults are not always a server's best: with each runtime's own
default (a spinning thread per core), PyTorch behind LitServe's two processes stalled for 0.2-0.7 s per
request on a shared 2-core machine, and fp32 onnxruntime's two spinning threads oversubscribed 2 cores.

Each (variant, concurrency) is measured ``--rounds`` times with the variants in a rotated order, so
that drifts in a shared machine's load fall on all of them alike; only the server under measurement
runs, the others are frozen with SIGSTOP (idle LitServe workers poll and would take CPU from it), but
for the Triton peers, which idle (tritonserver's Python backend crashed when thawed).

The timed rounds are wrk's (``bench/lab/wrk.py``): ``--duration`` whole seconds per variant and
connection count, every non-2xx answer an error, p50/p95/p99 from wrk's latency histogram. wrk speaks
no gRPC: ``balanced-grpc``'s rounds are as many grpc.aio clients on one channel for the same whole seconds,
every failed call an error, made into the same rows; the page marks them (``load``: ``python-grpc``): a
Python client's own time is in their latencies and it runs on the server's cores, so they are not directly
comparable with the wrk rows. Every server runs at its runtime's default threading (``--threads 0``) and,
with ``--tuned-threads N`` (default 1), again as ``<variant>+tuned`` (N intra-op threads, onnxruntime not
spinning: the best a server gets on a small machine). ``balanced-oip`` is this service over OIP JSON, the
protocol the Triton peers (``triton-onnx``, ``triton-int8``: bench/serving/triton.py) are sent; they need
``make triton-venv`` (or ``--triton-python``) and are left out with a warning without it.
Ratios come from numbers measured side by side in one run. Before the timed rounds every multipart and gRPC
variant classifies each image once, which warms it up and gives its accuracy and GFLOPs on identical images.
On a GPU machine ``--providers cuda`` (or ``auto``) puts every server's model on the GPU.

Third-party imports sit inside functions: the ``dynadapter`` parser imports this module, also in the
serving image, which has neither httpx nor torch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dynadapter import options
from dynadapter.bench.lab.images import BenchImages, bench_images
from dynadapter.bench.lab.load import Sample, answer_every_image, summarize_answers
from dynadapter.bench.lab.machine import machine
from dynadapter.bench.lab.process import ServerProcess, awake, launch
from dynadapter.bench.lab.results import fmt, quotient
from dynadapter.bench.lab.rows import AnswersRow, LoadRow, RatioCheck, Row
from dynadapter.bench.lab.wrk import BenchError, WrkRound, require_wrk, run_wrk, summarize_rounds
from dynadapter.bench.serving import grpc_rounds
from dynadapter.bench.serving.config import TRITON_VARIANTS, TUNED, VARIANTS, ServeBenchConfig, Variant
from dynadapter.bench.serving.inputs import (
    BenchInputs,
    prepare_inputs,
    request_bodies,
    server_commands,
    triton_python,
)

log = logging.getLogger(__name__)

#: the sections of docs/results.json this experiment writes and renders
RESULT_KEYS = ("serve",)


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
    # Time follows FLOPs (issue 32): under load, balanced serves >= 1.8x full depth (the FLOPs ratio is ~2.1) ...
    Target("balanced", "threshold-1", "throughput_rps", False, 1.8, True),
    # ... and the default serves >= 6x NVIDIA Triton's static fp32 graph and >= 1.5x its static int8 one.
    Target("balanced", "triton-onnx", "throughput_rps", False, 6.0, True),
    Target("balanced", "triton-int8", "throughput_rps", False, 1.5, True),
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
    from dynadapter.bench.lab.results import update_results

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    wrk = require_wrk()
    load_before = os.getloadavg()[0]
    config = without_missing_peers(config)
    with tempfile.TemporaryDirectory(prefix="dynadapter-bench-serve-") as work:
        inputs = prepare_inputs(config, Path(work))
        images = bench_images(inputs.run_dir, config.images)
        point = equal_accuracy_point(inputs, images, config)
        variants = resolved_variants(point, config)
        with contextlib.ExitStack() as stack:
            servers = start_servers(stack, inputs, config, variants)
            answers, measured = asyncio.run(measure_all(servers, images, config, variants, inputs.model_name, wrk))
        section = report(answers, measured, inputs, images, config, load_before, variants)
        if point is not None:
            section["equal_accuracy"] = {**point, "served": equal_accuracy_served(section["answers"])}
    update_results(config.docs, {"serve": section})
    print(result_table(section))


def equal_accuracy_point(inputs: BenchInputs, images: BenchImages, config: ServeBenchConfig) -> dict[str, Any] | None:
    """The ``equal-accuracy`` variant's threshold, from the cascade's calibration table (None if not asked for)."""
    if "equal-accuracy" not in config.variants:
        return None
    from dynadapter.bench.serving.equal_accuracy import operating_point
    from dynadapter.contract.model_repository import load_model

    table = load_model(inputs.model_repo, inputs.model_name).manifest.calibration.table
    point = operating_point(inputs.run_dir, sorted({float(row["threshold"]) for row in table}), len(images.bodies))
    log.info("equal accuracy: threshold %s (%s)", point["threshold"], point)
    return point


def without_missing_peers(config: ServeBenchConfig) -> ServeBenchConfig:
    """``config`` less the Triton variants where no Python with nvidia-pytriton is there (logged, not an error:
    `make triton-venv` makes one)."""
    if triton_python(config) is not None:
        return config
    dropped = [name for name in config.variants if name in TRITON_VARIANTS]
    if dropped:
        log.warning("no Triton peer (make triton-venv, or --triton-python): leaving out %s", ", ".join(dropped))
    return config.model_copy(update={"variants": [name for name in config.variants if name not in TRITON_VARIANTS]})


def resolved_variants(point: dict[str, Any] | None, config: ServeBenchConfig) -> dict[str, Variant]:
    """The chosen variants with the equal-accuracy query filled in, each followed by its ``+tuned`` row
    (``--tuned-threads``)."""
    chosen = {}
    for name in config.variants:
        variant = VARIANTS[name]
        if name == "equal-accuracy" and point is not None:
            query = variant.query.format(threshold=f"{point['threshold']:.6g}")
            variant = Variant(variant.server, query, variant.description, variant.protocol)
        chosen[name] = variant
        if config.tuned_threads:
            description = f"{variant.description}; {config.tuned_threads} intra-op thread(s), onnxruntime not spinning"
            chosen[name + TUNED] = Variant(variant.server + TUNED, variant.query, description, variant.protocol)
    return chosen


def equal_accuracy_served(answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The served accuracy of the equal-accuracy point against the served static graph's, same images."""
    ours, static = answers.get("equal-accuracy", {}), answers.get("static", {})
    accuracy, reference = ours.get("accuracy"), static.get("accuracy")
    within = None if accuracy is None or reference is None else accuracy >= reference - 0.005 - 1e-12
    return {"accuracy": accuracy, "static_accuracy": reference, "within_tolerance": within}


def start_servers(
    stack: contextlib.ExitStack, inputs: BenchInputs, config: ServeBenchConfig, variants: dict[str, Variant]
) -> dict[str, ServerProcess]:
    """Start the servers the chosen variants need and wait for them."""
    needed = {variant.server for variant in variants.values()}
    servers = launch(stack, {name: spec for name, spec in server_commands(inputs, config).items() if name in needed})
    for name, server in servers.items():
        # Thawed after a freeze, tritonserver's Python backend crashed (bench/lab/process.py): Triton idles instead.
        server.freezable = name.removesuffix(TUNED) not in TRITON_VARIANTS
    return servers


def variant_url(server: ServerProcess, variant: Variant, model_name: str) -> str:
    """Where a variant's requests go: the server's classify URL with the variant's query, or this service's OIP
    infer route for an OIP variant of this service (Triton's classify URL is its infer route already)."""
    if variant.protocol == "oip" and server.classify_url.endswith("/classify"):
        return f"{server.url}/v2/models/{model_name}/infer"
    return server.classify_url + variant.query


def variant_parameters(variant: Variant) -> dict[str, Any] | None:
    """An OIP or gRPC variant's knob as request parameters: its ``?mode=...`` query (None without one)."""
    return {"mode": variant.query.removeprefix("?mode=")} if variant.query.startswith("?mode=") else None


def variant_bodies(variant: Variant, images: BenchImages) -> tuple[list[bytes], str]:
    """The request bodies of a variant and their content type (Triton's model takes BYTES [N, 1])."""
    triton = variant.server.removesuffix(TUNED) in TRITON_VARIANTS
    return request_bodies(images, variant.protocol, batched=triton, parameters=variant_parameters(variant))


def _timed(
    server: ServerProcess, url: str, bodies: tuple[list[bytes], str], connections: int, duration_s: float, wrk: str
) -> WrkRound:
    """One timed wrk run; where it fails (a server that exited refuses connections), ``BenchError`` with the
    server's own last words."""
    try:
        return run_wrk(url, *bodies, connections, duration_s, wrk=wrk)
    except BenchError as err:
        alive = server.process.poll() is None
        state = "running" if alive else f"exited with {server.process.returncode}"
        raise BenchError(f"{err}; the {server.name} server ({state}) wrote: {server.output[-3000:]}") from err


async def measure_all(
    servers: dict[str, ServerProcess],
    images: BenchImages,
    config: ServeBenchConfig,
    variants: dict[str, Variant],
    model_name: str,
    wrk: str = "wrk",
) -> tuple[dict[str, list[Sample]], dict[tuple[str, int], list[WrkRound]]]:
    """Each multipart and gRPC variant's answers to every image (Python clients: the answers are read), an untimed
    wrk second of every OIP variant (its warm-up), then the timed rounds (wrk's; gRPC: ``grpc_rounds``), one
    server awake at a time."""
    for server in servers.values():
        server.pause()
    answers = {}
    for name, variant in variants.items():
        with awake(servers[variant.server]) as server:
            url = variant_url(server, variant, model_name)
            if variant.protocol == "multipart":
                answers[name] = await answer_every_image(url, images, max(config.concurrency))
            elif variant.protocol == "grpc":
                knob = variant_parameters(variant) or {}
                answers[name] = await grpc_rounds.answers(server, model_name, images, max(config.concurrency), knob)
            else:
                run_wrk(url, *variant_bodies(variant, images), max(config.concurrency), 1, wrk=wrk)
    names = list(variants)
    measured: dict[tuple[str, int], list[WrkRound]] = {(v, c): [] for c in config.concurrency for v in names}
    for round_index in range(config.rounds):
        for position, concurrency in enumerate(config.concurrency):
            shift = (round_index * len(config.concurrency) + position) % len(names)
            for name in [*names[shift:], *names[:shift]]:
                variant = variants[name]
                with awake(servers[variant.server]) as server:
                    if variant.protocol == "grpc":
                        knob = variant_parameters(variant) or {}
                        one = await grpc_rounds.timed_round(
                            server, model_name, images, concurrency, config.duration, knob
                        )
                    else:
                        url = variant_url(server, variant, model_name)
                        one = _timed(server, url, variant_bodies(variant, images), concurrency, config.duration, wrk)
                measured[name, concurrency].append(one)
                log.info(
                    "round %d/%d, %s at %d connections: %d answered, %d errors in %.1f s",
                    *(round_index + 1, config.rounds, name, concurrency, one.answered, one.errors, one.seconds),
                )
    return answers, measured


def check_targets(rows: list[dict[str, Any]], concurrencies: Sequence[int]) -> list[dict[str, Any]]:
    """Each target at each concurrency it applies to (the top one: "under load"), where both variants ran."""
    by = {(row.variant, row.concurrency): row for row in map(LoadRow.model_validate, rows)}
    checks = []
    for target in TARGETS:
        for concurrency in [max(concurrencies)] if target.top_only else concurrencies:
            ratio = quotient(
                _metric(by.get((target.numerator, concurrency)), target.metric),
                _metric(by.get((target.denominator, concurrency)), target.metric),
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
    measured: dict[tuple[str, int], list[WrkRound]],
    inputs: BenchInputs,
    images: BenchImages,
    config: ServeBenchConfig,
    load_before: float,
    variants: dict[str, Variant],
) -> dict[str, Any]:
    from dynadapter.contract.model_repository import load_model

    rows = [
        summarize_rounds(name, c, measured[name, c]) | _load_of(variants[name])
        for c in config.concurrency
        for name in variants
    ]
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
        "images": {
            "data": images.data,
            "split": "test",
            "count": len(images.bodies),
            "format": "PNG, multipart (OIP variants: base64 in JSON; gRPC: raw bytes in raw_input_contents)",
        },
        "settings": {
            "concurrency": config.concurrency,
            "duration_s": config.duration,
            "requests": config.requests,
            "rounds": config.rounds,
            "threads": config.threads,
            "tuned_threads": config.tuned_threads,
            "load": "wrk",
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        },
        "variants": {name: variant.description for name, variant in variants.items()},
        "answers": {name: summarize_answers(samples) for name, samples in answers.items()},
        "results": rows,
        "targets": check_targets(rows, config.concurrency),
    }


def _load_of(variant: Variant) -> dict[str, str]:
    """What a variant's rows say sent their load where it is not wrk (``summarize_rounds`` says ``wrk``)."""
    return {"load": grpc_rounds.GRPC_LOAD} if variant.protocol == "grpc" else {}


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}" if values else "-"


def _metric(row: LoadRow | None, metric: str) -> float | None:
    """A row's ``p50_ms`` or ``throughput_rps`` (a ``Target.metric``); None without the row."""
    return None if row is None else getattr(row, metric)


class ServeRows(Row):
    """The rows of the ``serve`` section that the page tabulates and judges."""

    results: list[LoadRow]
    answers: dict[str, AnswersRow]
    targets: list[RatioCheck]


def _table_rows(rows: ServeRows) -> list[list[str]]:
    by = {(row.variant, row.concurrency): row for row in rows.results}
    out = []
    for row in rows.results:
        name, clients = row.variant, row.concurrency
        answers = rows.answers.get(name)
        thr1, static = by.get(("threshold-1", clients)), by.get(("static", clients))
        marked = f"{name} (Python client)" if row.load == grpc_rounds.GRPC_LOAD else name
        out.append(
            [
                marked,
                str(clients),
                fmt(row.p50_ms, 2),
                fmt(row.p95_ms, 2),
                fmt(row.p99_ms, 2),
                fmt(row.throughput_rps),
                _spread(row.throughput_rps_rounds),
                fmt(quotient(row.p50_ms, _metric(thr1, "p50_ms")), 2),
                fmt(quotient(row.throughput_rps, _metric(static, "throughput_rps")), 2),
                fmt(None if answers is None else answers.gflops_per_image, 4),
                fmt(None if answers is None else answers.accuracy, 3),
                f"{row.answered}/{row.requests}",
            ]
        )
    return out


HEADER = [
    "variant",
    "clients",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "req/s",
    "req/s by round",
    "p50 / thr-1",
    "req/s / static",
    "GFLOPs/img",
    "accuracy",
    "answered",
]


def _target_lines(rows: ServeRows) -> list[str]:
    lines = []
    for check in rows.targets:
        ratio, bound = check.ratio, check.bound
        side = "over" if ratio > bound else "under"
        clients = f"{check.concurrency} client{'s' if check.concurrency != 1 else ''}"
        # Four decimals: a ratio a hair over its bound (1.0504 against 1.05) must not print as equal to it.
        lines.append(
            f"{'met   ' if check.met else 'MISSED'} {check.target} at {clients}: "
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
    parsed = ServeRows.model_validate(section)
    rows = [HEADER, *_table_rows(parsed)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    return "\n".join([*lines, "", *filter(None, [_equal_accuracy_text(section)]), *_target_lines(parsed)])


def _load_text(settings: dict[str, Any]) -> str:
    """How the timed rounds were sent: wrk (``bench/lab/wrk.py``), or the Python clients of results written before."""
    if settings.get("load") == "wrk":
        return (
            f"Load from wrk, {settings['rounds']} interleaved rounds of {settings['duration_s']:g} s per variant and "
            "connection count, latencies from wrk's histogram of every round."
        )
    return (
        f"{settings['rounds']} interleaved rounds of at most {settings['duration_s']:g} s or {settings['requests']} "
        "requests per variant and concurrency (Python clients)."
    )


def _python_client_text(section: dict[str, Any]) -> str:
    """The sentence on the rows whose timed rounds Python clients sent (gRPC: wrk speaks none), if any."""
    names = sorted({row["variant"] for row in section["results"] if row.get("load") == grpc_rounds.GRPC_LOAD})
    if not names:
        return ""
    return (
        f' Rows marked "(Python client)" ({", ".join(f"`{name}`" for name in names)}): OIP gRPC ModelInfer sent by '
        "as many grpc.aio clients on one channel for the same seconds, not by wrk; the client's own time is in "
        "their latencies and it runs on the servers' cores, so they are not directly comparable with wrk's rows; "
        "their accuracy and GFLOPs/img: every image classified once over gRPC."
    )


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
        f"{s['max_batch_size']} images a batch, at most {s['max_wait_ms']:g} ms of waiting for one, "
        + (f"{s['threads']} intra-op thread(s)" if s["threads"] else "its runtime's default threads")
        + (
            f"; `+tuned` rows: the same server with {s['tuned_threads']} intra-op thread(s) and onnxruntime not "
            "spinning"
            if s.get("tuned_threads")
            else ""
        )
        + ". "
        + _load_text(s)
        + _python_client_text(section)
        + " `p50 / thr-1`: p50 over this service's at threshold 1; "
        "`req/s / static`: throughput over this service's on the static graph; accuracy and GFLOPs/img: "
        "every image classified once by each multipart variant (Python clients)."
    )


def render_markdown(results: dict[str, Any]) -> str:
    """The serving section of the results page (empty without one)."""
    section = results.get("serve")
    if not section:
        return ""
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    rows = ServeRows.model_validate(section)
    table += ["| " + " | ".join(row) + " |" for row in _table_rows(rows)]
    variants = "; ".join(f"`{name}`: {text}" for name, text in section["variants"].items())
    targets = [f"- {line}" for line in _target_lines(rows)]
    equal = [_equal_accuracy_text(section), ""] if section.get("equal_accuracy") else []
    return "\n".join(
        [
            *("## Serving", "", _setup_text(section), "", *table, "", f"Variants: {variants}.", ""),
            *equal,
            *("Targets:", "", *targets),
        ]
    )
