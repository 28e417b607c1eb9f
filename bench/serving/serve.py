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
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dynadapter import options
from dynadapter.bench.lab.images import BenchImages, bench_images
from dynadapter.bench.lab.load import Measured, Sample, answer_every_image, measure, summarize, summarize_answers
from dynadapter.bench.lab.machine import machine
from dynadapter.bench.lab.process import ServerProcess, awake, launch
from dynadapter.bench.lab.results import fmt, quotient
from dynadapter.bench.lab.rows import AnswersRow, LoadRow, RatioCheck, Row
from dynadapter.bench.serving.config import VARIANTS, ServeBenchConfig, Variant
from dynadapter.bench.serving.inputs import BenchInputs, prepare_inputs, server_commands

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
    from dynadapter.bench.serving.equal_accuracy import operating_point
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


def start_servers(
    stack: contextlib.ExitStack, inputs: BenchInputs, config: ServeBenchConfig
) -> dict[str, ServerProcess]:
    """Start the servers the chosen variants need and wait for them."""
    needed = {VARIANTS[name].server for name in config.variants}
    return launch(stack, {name: spec for name, spec in server_commands(inputs, config).items() if name in needed})


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
        with awake(servers[variants[name].server]) as server:
            answers[name] = await answer_every_image(
                server.classify_url + variants[name].query, images, max(config.concurrency)
            )
    measured = {(v, c): Measured() for c in config.concurrency for v in config.variants}
    for round_index in range(config.rounds):
        for position, concurrency in enumerate(config.concurrency):
            shift = (round_index * len(config.concurrency) + position) % len(config.variants)
            for name in [*config.variants[shift:], *config.variants[:shift]]:
                with awake(servers[variants[name].server]) as server:
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
        answers = rows.answers[name]
        thr1, static = by.get(("threshold-1", clients)), by.get(("static", clients))
        out.append(
            [
                name,
                str(clients),
                fmt(row.p50_ms, 2),
                fmt(row.p95_ms, 2),
                fmt(row.throughput_rps),
                _spread(row.throughput_rps_rounds),
                fmt(quotient(row.p50_ms, _metric(thr1, "p50_ms")), 2),
                fmt(quotient(row.throughput_rps, _metric(static, "throughput_rps")), 2),
                fmt(answers.gflops_per_image, 4),
                fmt(answers.accuracy, 3),
                f"{row.answered}/{row.requests}",
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
