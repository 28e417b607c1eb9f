"""``dynadapter bench adapt``: the service adapting at run time, on camera-like photos of test digits.

Two scenarios, each against real server processes on loopback, one server awake at a time (the
others frozen with SIGSTOP, as in ``bench serve``), every request a phone JPEG (``--photo-size``,
bench/lab/photo_corpus.py) of a test image of the model's data set, so that accuracy is known:

- **ramp**: clients (back to back, no think time) step through ``--clients`` for ``--step-s`` each,
  against three configurations: ``controller`` (a server with ``--target-p95-ms``; requests with
  ``mode=auto`` follow its operating point), ``balanced`` and ``threshold-1`` (a server without the
  controller, fixed ``mode=balanced`` / ``threshold=1``). The steps are interleaved (every
  configuration at one client count, in a rotated order, then the next count), so that the load of a
  shared machine falls on all alike. The target is ``--target-p95-ms``, or ``--target-factor`` times
  the p95 of fixed ``balanced`` at one client, measured first.
- **drift**: ``--drift-clients`` clients send clean photos for ``--clean-s``, then the same digits
  corrupted (``--corruptions`` at ``--severity``, training/corruptions.py, applied to the digit before it
  is photographed; image i gets kind i mod len(kinds), seed i) for ``--drift-s``, to a server with
  ``--live-calibration`` and to one without, both at their default operating point (no knob).
  Agreement with the last exit is judged by the bench itself, the same way for both: every photo's
  last-exit answer is asked once beforehand (``threshold=1``, on the server without live calibration).
  The live server's window (``--calibration-window``, smaller than the service's default) is sized to
  fill with drifted images before the judged part of the phase at the demo's throughput on 2 cores;
  the page reports how many it shadowed by then.

Targets, as issue #17 states them:

- ramp: with the controller on, p95 stays within the target up to at least 2x the client count at
  which fixed ``balanced`` first exceeds it, with accuracy at or above the floor at each of those
  steps. The floor is ``--accuracy-floor``: a mode (its accuracy measured on exactly the photos each
  step sent) or an accuracy in (0, 1].
- drift: over the last ``--judge-fraction`` of the drifted phase (after live calibration had time
  to adapt), agreement with the last exit is >= 1 - epsilon with live calibration and < 1 - epsilon
  without it.

Every server's decode queue holds the top client count, so that no request is refused (a 503 is no
latency to measure). Time series (``--bucket-s`` buckets by completion time) and the servers'
adaptation metrics (scraped from /metrics every ``--scrape-s``) go into results.json; the plots
into docs/results/adapt_*.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import time
from typing import Any

from dynadapter import options
from dynadapter.bench.lab.images import BenchImages
from dynadapter.bench.lab.load import Sample, answer_every_image, measure
from dynadapter.bench.lab.process import ServerProcess, awake, launch
from dynadapter.bench.lab.servers import service_argv
from dynadapter.bench.serving.adapt_report import FIGURES, render_markdown, report, stats
from dynadapter.bench.serving.adapt_setup import (
    DRIFT,
    RAMP,
    AdaptBenchConfig,
    AdaptInputs,
    References,
    Run,
    prepare_inputs,
)
from dynadapter.errors import ConfigError

log = logging.getLogger(__name__)

#: what is scraped from /metrics (labels other than model and version kept in the key)
SCRAPED = (
    "dynadapter_operating_threshold",
    "dynadapter_operating_flops_fraction",
    "dynadapter_latency_target_violations_total",
    "dynadapter_degraded_seconds_total",
    "dynadapter_exit_reasons_total",
    "dynadapter_exit_agreement",
    "dynadapter_live_threshold",
    "dynadapter_shadow_images_total",
    "dynadapter_shadow_agreements_total",
    "dynadapter_shadow_flops_total",
)
MAX_REQUESTS = 10**9  # steps are bounded by time only


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="the latency controller under a load ramp and live calibration under input drift",
        description=__doc__.splitlines()[0],
    )
    options.add_arguments(p, AdaptBenchConfig)


def run(args: argparse.Namespace) -> None:
    adapt_benchmark(options.from_args(AdaptBenchConfig, args))


def adapt_benchmark(config: AdaptBenchConfig) -> dict[str, Any]:
    """Run both scenarios, write the plots and the ``adapt`` section of docs/results.{json,md}; return it."""
    from dynadapter.bench.lab.figures import plot_drift, plot_ramp
    from dynadapter.bench.lab.results import update_results

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    load_before = os.getloadavg()[0]
    inputs = prepare_inputs(config)
    with contextlib.ExitStack() as stack:
        servers = launch(stack, {name: _command(argv) for name, argv in server_argvs(inputs, config).items()})
        for server in servers.values():
            server.pause()
        refs = asyncio.run(references(servers["fixed"], inputs, config.accuracy_floor))
        probe = asyncio.run(loaded(servers["fixed"], RAMP["balanced"].query, inputs.clean, 1, config.step_s, config))
        target_ms = config.target_p95_ms or config.target_factor * stats(probe.samples).p95_ms
        controller = server_argvs(inputs, config, target_ms)["controller"]
        servers |= launch(stack, {"controller": _command(controller)})
        servers["controller"].pause()
        for name, query in (("controller", RAMP["controller"].query), ("live", "")):
            asyncio.run(warm_up(servers[name], query, inputs.clean, config.max_batch_size))
        asyncio.run(back_to_default(servers["controller"]))
        ramp_runs = asyncio.run(ramp(servers, inputs.clean, config))
        drift_runs = asyncio.run(drift(servers, inputs, config))
    section = report(inputs, refs, probe, target_ms, ramp_runs, drift_runs, config, load_before)
    plot_ramp(section["ramp"], config.docs / FIGURES["ramp"])
    plot_drift(section["drift"], config.docs / FIGURES["drift"])
    update_results(config.docs, {"adapt": section})
    print(render_markdown({"adapt": section}))
    return section


# -- servers -----------------------------------------------------------------------------------------------------


def server_argvs(inputs: AdaptInputs, config: AdaptBenchConfig, target_ms: float | None = None) -> dict[str, list[str]]:
    """Server name -> `dynadapter serve` argv (without --port); the controller's only with ``target_ms``."""
    base = [*service_argv(config, config.providers), "--model-repo", str(inputs.model_repo)]
    # every client's request may wait for a decode thread: a refusal (503) is no latency to measure
    base += [
        "--models",
        inputs.model_name,
        "--model-name",
        inputs.model_name,
        "--decode-queue",
        str(max(*config.clients, config.drift_clients)),
    ]
    argvs = {
        "fixed": base,
        "live": [
            *base,
            *("--live-calibration", str(config.live_calibration), "--live-calibration-epsilon", str(config.epsilon)),
            *("--live-calibration-every", str(config.calibration_every)),
            *("--live-calibration-window", str(config.calibration_window)),
        ],
    }
    if target_ms is not None:
        argvs["controller"] = [
            *base,
            *("--target-p95-ms", f"{target_ms:.3f}", "--accuracy-floor", config.accuracy_floor),
            *("--control-period-s", str(config.control_period_s)),
        ]
    return argvs


def _command(argv: list[str]) -> tuple[list[str], str, str]:
    return argv, "/readyz", "/classify"


async def loaded(
    server: ServerProcess, query: str, images: BenchImages, clients: int, seconds: float, config: AdaptBenchConfig
) -> Run:
    """``clients`` back to back for ``seconds`` with only ``server`` awake, scraping its /metrics meanwhile."""
    scrapes: list[tuple[float, dict[str, float | None]]] = []
    done = asyncio.Event()
    with awake(server):
        scraper = asyncio.create_task(scrape(server.url + "/metrics", config.scrape_s, scrapes, done))
        try:
            samples, elapsed = await measure(server.classify_url + query, images, clients, MAX_REQUESTS, seconds)
        finally:
            done.set()
            await scraper
    start = min((sample.at for sample in samples), default=time.perf_counter())
    log.info("%s%s at %d clients: %d requests in %.1f s", server.name, query, clients, len(samples), elapsed)
    return Run(clients, samples, start, elapsed, scrapes)


async def scrape(
    url: str, period_s: float, out: list[tuple[float, dict[str, float | None]]], done: asyncio.Event
) -> None:
    """Append (time.perf_counter, ``adaptation_series``) of ``url`` every ``period_s``, and once more when
    ``done`` is set (the state the load left)."""
    import httpx

    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            try:
                out.append((time.perf_counter(), adaptation_series((await client.get(url)).text)))
            except httpx.HTTPError as err:
                log.warning("scraping %s failed: %r", url, err)
            if done.is_set():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), period_s)


def adaptation_series(exposition: str) -> dict[str, float | None]:
    """The ``SCRAPED`` samples of a Prometheus exposition, keyed ``name{label="value",...}`` with the labels
    other than model and version, sorted (``name`` alone where there are none); NaN (the operating threshold
    at the default mode's own) as None."""
    from prometheus_client.parser import text_string_to_metric_families

    series = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name in SCRAPED:
                labels = ",".join(
                    f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k not in ("model", "version")
                )
                value = float(sample.value)
                series[f"{sample.name}{{{labels}}}" if labels else sample.name] = None if math.isnan(value) else value
    return series


async def references(server: ServerProcess, inputs: AdaptInputs, floor: str) -> References:
    """Every photo's last-exit answer (``threshold=1``) and, for a mode floor, that mode's answers: the
    yardsticks of agreement and of the accuracy floor, asked once of a server without adaptation."""
    number = _floor_number(floor, inputs.manifest.modes)

    async def answers(query: str, images: BenchImages) -> list[Sample]:
        return sorted(await answer_every_image(server.classify_url + query, images, 4), key=lambda sample: sample.image)

    with awake(server):
        last_clean = [_class_id(s) for s in await answers("?threshold=1", inputs.clean)]
        last_drifted = [_class_id(s) for s in await answers("?threshold=1", inputs.drifted)]
        floor_correct = (
            None if number is not None else [s.correct for s in await answers(f"?mode={floor}", inputs.clean)]
        )
    return References(last_clean, last_drifted, floor_correct, number)


def _floor_number(floor: str, modes: dict[str, Any]) -> float | None:
    """A numeric floor, or None for a mode name of the model."""
    from dynadapter.service.settings import floor_accuracy  # the service's own reading of the setting

    try:
        value = floor_accuracy(floor)
    except ValueError as err:
        raise ConfigError(f"--accuracy-floor: {err}") from None
    if value is None and floor not in modes:
        raise ConfigError(f"--accuracy-floor {floor!r}: not a mode of the model ({sorted(modes)}) nor a number")
    return value


def _class_id(sample: Sample) -> int | None:
    return sample.answer["class_id"] if sample.answer else None


async def warm_up(server: ServerProcess, query: str, images: BenchImages, clients: int) -> None:
    """Every image once, untimed: a server's first batches (of each size) are slower than the rest."""
    with awake(server):
        await answer_every_image(server.classify_url + query, images, clients)


async def back_to_default(server: ServerProcess, timeout_s: float = 60.0) -> None:
    """Leave the controller awake and idle until it is back at the default operating point (a warm-up at
    full batches overloads it), so that the ramp starts where a fresh server would."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with awake(server):
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                series = adaptation_series((await client.get(server.url + "/metrics")).text)
                if series.get("dynadapter_operating_threshold", 0.0) is None:  # NaN: the default mode's own
                    return
                await asyncio.sleep(0.5)
    log.warning("the controller was not back at the default operating point after %.0f s", timeout_s)


async def ramp(
    servers: dict[str, ServerProcess], images: BenchImages, config: AdaptBenchConfig
) -> dict[str, list[Run]]:
    """Every configuration at every client count, interleaved (rotated order per step)."""
    runs: dict[str, list[Run]] = {name: [] for name in RAMP}
    names = list(RAMP)
    for position, clients in enumerate(config.clients):
        shift = position % len(names)
        for name in [*names[shift:], *names[:shift]]:
            variant = RAMP[name]
            runs[name].append(
                await loaded(servers[variant.server], variant.query, images, clients, config.step_s, config)
            )
    return runs


async def drift(
    servers: dict[str, ServerProcess], inputs: AdaptInputs, config: AdaptBenchConfig
) -> dict[str, list[Run]]:
    """Each drift server through the clean phase, then each through the drifted one (their state carries on)."""
    runs: dict[str, list[Run]] = {name: [] for name in DRIFT}
    for images, seconds in ((inputs.clean, config.clean_s), (inputs.drifted, config.drift_s)):
        for name in DRIFT:
            runs[name].append(await loaded(servers[name], "", images, config.drift_clients, seconds, config))
    return runs
