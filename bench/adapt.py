"""``dynadapter bench adapt``: the service adapting at run time, on camera-like photos of test digits.

Two scenarios, each against real server processes on loopback, one server awake at a time (the
others frozen with SIGSTOP, as in ``bench serve``), every request a phone JPEG (``--photo-size``,
bench/photos.py) of a test image of the model's data set, so that accuracy is known:

- **ramp**: clients (back to back, no think time) step through ``--clients`` for ``--step-s`` each,
  against three configurations: ``controller`` (a server with ``--target-p95-ms``; requests with
  ``mode=auto`` follow its operating point), ``balanced`` and ``threshold-1`` (a server without the
  controller, fixed ``mode=balanced`` / ``threshold=1``). The steps are interleaved (every
  configuration at one client count, in a rotated order, then the next count), so that the load of a
  shared machine falls on all alike. The target is ``--target-p95-ms``, or ``--target-factor`` times
  the p95 of fixed ``balanced`` at one client, measured first.
- **drift**: ``--drift-clients`` clients send clean photos for ``--clean-s``, then the same digits
  corrupted (``--corruptions`` at ``--severity``, bench/corruptions.py, applied to the digit before it
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from dynadapter import options
from dynadapter.bench import serve
from dynadapter.bench.results import fmt
from dynadapter.bench.serve import BenchImages, Sample, ServerOptions, ServerProcess, Variant
from dynadapter.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RESULT_KEYS = ("adapt",)
FIGURES = {"ramp": Path("results") / "adapt_ramp.png", "drift": Path("results") / "adapt_drift.png"}
#: the ramp's configurations; "fixed" is one server without the controller, serving both fixed knobs
RAMP = {
    "controller": Variant("controller", "?mode=auto", "latency controller on, requests with mode=auto"),
    "balanced": Variant("fixed", "?mode=balanced", "fixed mode balanced"),
    "threshold-1": Variant("fixed", "?threshold=1", "fixed threshold 1 (no early exit)"),
}
#: the drift scenario's servers, both asked with no knob (their default operating point)
DRIFT = {"live": "live calibration on", "fixed": "live calibration off"}
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


def _size(value: object) -> object:
    """``WxH`` (or ``W,H``) -> (W, H)."""
    if isinstance(value, str):
        width, sep, height = value.lower().replace(",", "x").partition("x")
        if not sep:
            raise ValueError("expected WIDTHxHEIGHT, e.g. 1600x1200")
        return (width, height)
    return value


def _kinds(kinds: list[str]) -> list[str]:
    from dynadapter.bench.corruptions import KINDS

    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"expected a comma-separated subset of {list(KINDS)}")
    return kinds


CommaList = BeforeValidator(options.comma_separated)


class AdaptBenchConfig(ServerOptions):
    """What `dynadapter bench adapt` measures and how; its flags are generated from these fields."""

    model_repo: Path | None = Field(
        None, description="model repository (default: the demo's, built by `dynadapter demo build` into var/model_repo)"
    )
    model_name: str | None = Field(None, description="model in --model-repo (default: mnist in the demo's)")
    run_dir: Path | None = Field(
        None,
        description="the run the model was trained in: its data set's test split is photographed (default: the "
        "demo run for the demo model, else the builtin data set the manifest names, split with seed 0)",
    )
    images: int = Field(200, ge=1, description="test images photographed, cycled; each also corrupted once")
    photo_size: Annotated[tuple[int, int], BeforeValidator(_size)] = Field(
        (1600, 1200), description="the photos' WIDTHxHEIGHT in pixels (phone JPEGs, EXIF orientation 6)"
    )
    clients: Annotated[list[Annotated[int, Field(ge=1)]], CommaList] = Field(
        [1, 2, 4, 8, 16, 32, 64], min_length=1, description="the ramp's client counts, comma-separated, in order"
    )
    step_s: float = Field(6.0, gt=0, description="seconds of each ramp step, per configuration")
    target_p95_ms: float | None = Field(None, gt=0, description="the controller's p95 target in ms (default: below)")
    target_factor: float = Field(
        4.0, gt=0, description="without --target-p95-ms: the target is this times fixed balanced's p95 at 1 client"
    )
    accuracy_floor: str = Field(
        "fast", description="the controller's floor: a mode name or a validation accuracy in (0, 1]"
    )
    control_period_s: float = Field(0.5, gt=0, description="the controller's period in seconds")
    drift_clients: int = Field(8, ge=1, description="clients of the drift scenario")
    clean_s: float = Field(30.0, gt=0, description="seconds of clean photos before the drift")
    drift_s: float = Field(90.0, gt=0, description="seconds of corrupted photos")
    corruptions: Annotated[list[str], CommaList, AfterValidator(_kinds)] = Field(
        ["gaussian_blur", "gaussian_noise", "contrast", "rotate"],
        description="corruptions of the drifted photos, comma-separated (bench/corruptions.py)",
    )
    severity: int = Field(3, ge=1, le=5, description="corruption severity, 1-5 (bench/corruptions.py's table)")
    live_calibration: float = Field(0.25, gt=0, le=1, description="fraction of images shadowed by the live server")
    epsilon: float = Field(0.02, gt=0, lt=1, description="agreement target 1 - epsilon (the live server's epsilon)")
    calibration_every: int = Field(50, ge=1, description="the live server re-chooses thresholds every N shadows")
    calibration_window: int = Field(200, ge=1, description="the live server's sliding window of shadow samples")
    judge_fraction: float = Field(
        0.5, gt=0, le=1, description="agreement is judged on this last fraction of the drifted phase"
    )
    bucket_s: float = Field(3.0, gt=0, description="width of the time series' buckets in seconds")
    scrape_s: float = Field(1.0, gt=0, description="seconds between scrapes of the server's /metrics")
    docs: Path = Field(Path("docs"), description="where results.{json,md} and results/adapt_*.png go")


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
    from dynadapter.bench.figures import plot_drift, plot_ramp
    from dynadapter.bench.results import update_results

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    load_before = os.getloadavg()[0]
    inputs = prepare_inputs(config)
    with contextlib.ExitStack() as stack:
        servers = serve.launch(stack, {name: _command(argv) for name, argv in server_argvs(inputs, config).items()})
        for server in servers.values():
            server.pause()
        refs = asyncio.run(references(servers["fixed"], inputs, config.accuracy_floor))
        probe = asyncio.run(loaded(servers["fixed"], RAMP["balanced"].query, inputs.clean, 1, config.step_s, config))
        target_ms = config.target_p95_ms or config.target_factor * stats(probe.samples)["p95_ms"]
        controller = server_argvs(inputs, config, target_ms)["controller"]
        servers |= serve.launch(stack, {"controller": _command(controller)})
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


# -- inputs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptInputs:
    model_repo: Path
    model_name: str
    manifest: Any  # dynadapter.contract.Manifest
    data: str
    seed: int
    clean: BenchImages
    drifted: BenchImages  # image i is clean image i corrupted by kinds[i]
    kinds: list[str]


def prepare_inputs(config: AdaptBenchConfig) -> AdaptInputs:
    """The model (the demo's by default) and its test digits photographed, clean and corrupted."""
    from dynadapter.bench.serve_photos import camera_bodies, split_digits
    from dynadapter.contract.model_repository import load_model
    from dynadapter.export.demo import DEMO_RUNS, build_demo_repo

    repo, name = config.model_repo, config.model_name
    if repo is None:
        repo, name = build_demo_repo(serve.DEMO_MODEL_REPO), name or next(iter(DEMO_RUNS))
    manifest = load_model(repo, name).manifest
    run_dir = config.run_dir or (DEMO_RUNS.get(manifest.name) if config.model_repo is None else None)
    data, seed = _data_source(run_dir, manifest.training)
    digits, targets = split_digits(data, seed, config.images)
    kinds = [config.corruptions[i % len(config.corruptions)] for i in range(len(digits))]
    drifted = corrupted_digits(digits, kinds, config.severity)
    log.info("photographing %d test images of %s, clean and corrupted, at %dx%d", len(digits), data, *config.photo_size)
    return AdaptInputs(
        repo,
        manifest.name,
        manifest,
        data,
        seed,
        BenchImages(camera_bodies(digits, config.photo_size), targets, data),
        BenchImages(camera_bodies(drifted, config.photo_size), targets, data),
        kinds,
    )


def _data_source(run_dir: Path | None, training: dict[str, object] | None) -> tuple[str, int]:
    """(data set, split seed): the run's, else the builtin data set the manifest records, seed 0."""
    if run_dir is not None:
        from dynadapter.training.run_dir import read_config

        run = read_config(run_dir)
        return run.data, int(run.train["seed"])
    data = str((training or {}).get("data", ""))
    if not data.startswith("builtin:"):
        raise DataError(f"the model records no builtin data set ({data or 'none'}): pass --run-dir, its training run")
    return data, 0


def corrupted_digits(digits: Sequence[np.ndarray], kinds: Sequence[str], severity: int) -> list[np.ndarray]:
    """Digit i corrupted by ``kinds[i]`` at ``severity`` with seed i (bench/corruptions.py)."""
    from dynadapter.bench.corruptions import corrupt

    return [
        np.asarray(corrupt(d, kind, severity, seed=i)) for i, (d, kind) in enumerate(zip(digits, kinds, strict=True))
    ]


# -- servers -----------------------------------------------------------------------------------------------------


def server_argvs(inputs: AdaptInputs, config: AdaptBenchConfig, target_ms: float | None = None) -> dict[str, list[str]]:
    """Server name -> `dynadapter serve` argv (without --port); the controller's only with ``target_ms``."""
    base = [*serve.service_argv(config, config.providers), "--model-repo", str(inputs.model_repo)]
    # every client's request may wait for a decode thread: a refusal (503) is no latency to measure
    base += ["--model-name", inputs.model_name, "--decode-queue", str(max(*config.clients, config.drift_clients))]
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


# -- load --------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One stretch of load on one server: its samples, its start (time.perf_counter) and length in seconds,
    and the adaptation metrics scraped meanwhile as (time.perf_counter, series -> value)."""

    clients: int
    samples: list[Sample]
    start: float
    seconds: float
    scrapes: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)


async def loaded(
    server: ServerProcess, query: str, images: BenchImages, clients: int, seconds: float, config: AdaptBenchConfig
) -> Run:
    """``clients`` back to back for ``seconds`` with only ``server`` awake, scraping its /metrics meanwhile."""
    scrapes: list[tuple[float, dict[str, float | None]]] = []
    done = asyncio.Event()
    with serve._awake(server):
        scraper = asyncio.create_task(scrape(server.url + "/metrics", config.scrape_s, scrapes, done))
        try:
            samples, elapsed = await serve.measure(server.classify_url + query, images, clients, MAX_REQUESTS, seconds)
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


@dataclass(frozen=True)
class References:
    """Per image: the class id the last exit answers (clean and drifted photos), and whether the floor mode
    answers the clean photo right (None with a numeric floor)."""

    last_clean: list[int | None]
    last_drifted: list[int | None]
    floor_correct: list[bool] | None
    floor: float | None  # a numeric floor


async def references(server: ServerProcess, inputs: AdaptInputs, floor: str) -> References:
    """Every photo's last-exit answer (``threshold=1``) and, for a mode floor, that mode's answers: the
    yardsticks of agreement and of the accuracy floor, asked once of a server without adaptation."""
    number = _floor_number(floor, inputs.manifest.modes)

    async def answers(query: str, images: BenchImages) -> list[Sample]:
        return sorted(
            await serve.answer_every_image(server.classify_url + query, images, 4), key=lambda sample: sample.image
        )

    with serve._awake(server):
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
    with serve._awake(server):
        await serve.answer_every_image(server.classify_url + query, images, clients)


async def back_to_default(server: ServerProcess, timeout_s: float = 60.0) -> None:
    """Leave the controller awake and idle until it is back at the default operating point (a warm-up at
    full batches overloads it), so that the ramp starts where a fresh server would."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with serve._awake(server):
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


# -- summaries ---------------------------------------------------------------------------------------------------


def stats(
    samples: Sequence[Sample], last: Sequence[int | None] | None = None, floor: Sequence[bool] | None = None
) -> dict[str, Any]:
    """p95 latency (ms), accuracy, agreement with ``last`` (the last exit's class id per image), the floor
    mode's accuracy on the same images (``floor``: right or not per image), mean threshold (a per-exit
    vector counts as the mean of its entries), exit reasons."""
    ok = [s for s in samples if s.ok]
    answers = [s.answer or {} for s in ok]
    thresholds = [float(np.mean(a["threshold"])) for a in answers if a.get("threshold") is not None]
    row: dict[str, Any] = {
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "p95_ms": float(np.percentile([s.seconds * 1000 for s in ok], 95)) if ok else None,
        "accuracy": _mean([s.correct for s in ok]),
        "threshold": _mean(thresholds),
        "exit_reasons": dict(Counter(str(a.get("exit_reason")) for a in answers)),
    }
    if last is not None:
        row["agreement"] = _mean([a.get("class_id") == last[s.image] for s, a in zip(ok, answers, strict=True)])
    if floor is not None:
        row["floor_accuracy"] = _mean([floor[s.image] for s in ok])
    return row


def _mean(values: Sequence[float | bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarize_run(run: Run, **yardsticks: Any) -> dict[str, Any]:
    """A run's ``stats`` with its client count, length and throughput (answered requests per second)."""
    row = stats(run.samples, **yardsticks)
    answered = row["requests"] - row["errors"]
    return {"clients": run.clients, "seconds": run.seconds, "throughput_rps": answered / run.seconds, **row}


def buckets(run: Run, offset: float, bucket_s: float, **yardsticks: Any) -> list[dict[str, Any]]:
    """``stats`` and throughput per ``bucket_s`` of ``run``, by completion time; the last bucket takes the rest
    (under 1.5 ``bucket_s``: a run overshoots its length by the requests in flight at its end); ``t``: the
    bucket's middle in seconds, counted from ``offset``."""
    count = max(1, round(run.seconds / bucket_s))
    inside: list[list[Sample]] = [[] for _ in range(count)]
    for sample in run.samples:
        inside[min(int((sample.at + sample.seconds - run.start) // bucket_s), count - 1)].append(sample)
    rows = []
    for index, samples in enumerate(inside):
        low = index * bucket_s
        high = run.seconds if index == count - 1 else low + bucket_s
        row = stats(samples, **yardsticks)
        row["throughput_rps"] = (row["requests"] - row["errors"]) / (high - low)
        rows.append({"t": offset + (low + high) / 2, "clients": run.clients, **row})
    return rows


def timeline(runs: Sequence[Run], bucket_s: float, yardsticks: Sequence[dict[str, Any]]) -> dict[str, list]:
    """Runs laid end to end: the bucketed series, the scrapes (``t`` in seconds from the first run's start),
    each run's start on that axis and its length in seconds."""
    series, scraped, starts, offset = [], [], [], 0.0
    for run, yardstick in zip(runs, yardsticks, strict=True):
        starts.append(offset)
        series += buckets(run, offset, bucket_s, **yardstick)
        scraped += [{"t": offset + at - run.start, **values} for at, values in run.scrapes if at >= run.start]
        offset += run.seconds
    return {"series": series, "scrapes": scraped, "starts": starts, "seconds": [run.seconds for run in runs]}


# -- targets -----------------------------------------------------------------------------------------------------


def ramp_verdict(steps: dict[str, list[dict[str, Any]]], target_ms: float) -> dict[str, Any]:
    """Issue #17's ramp target on per-step rows (``clients``, ``p95_ms``, ``errors``, ``accuracy``,
    ``floor_accuracy``) of ``balanced`` and ``controller``, in ramp order: the controller keeps p95 <=
    ``target_ms``, answers every request and keeps accuracy >= the floor at every step up to twice the client
    count at which fixed balanced first exceeds the target (or fails requests)."""
    exceeded = _first_over(steps["balanced"], target_ms)
    controller = steps["controller"]
    holds = 0
    for step in controller:
        if _over(step, target_ms):
            break
        holds = step["clients"]
    verdict: dict[str, Any] = {"balanced_exceeds_at": exceeded, "controller_holds_up_to": holds}
    if exceeded is None:
        return verdict | {"met": False, "why": "fixed balanced stayed within the target at every step measured"}
    required = 2 * exceeded
    judged = [s for s in controller if s["clients"] <= required]
    worst = max(judged, key=lambda s: float("inf") if s["p95_ms"] is None else s["p95_ms"])
    margins = [_margin(s) for s in judged]
    verdict |= {
        "required_clients": required,
        "worst_p95_ms": worst["p95_ms"],
        "worst_p95_over_target": worst["p95_ms"] / target_ms if worst["p95_ms"] is not None else None,
        "failed_requests": sum(s["errors"] for s in judged),
        "lowest_accuracy_margin": min(margins),
    }
    if max(s["clients"] for s in controller) < required:
        return verdict | {"met": False, "why": f"the ramp stops below {required} clients"}
    latency = holds >= required
    accuracy = all(margin >= 0 for margin in margins)
    why = [] if latency else [f"controller misses the target from {_first_over(judged, target_ms)} clients"]
    why += [f"{verdict['failed_requests']} requests failed"] if verdict["failed_requests"] else []
    why += [] if accuracy else ["controller accuracy below the floor"]
    return verdict | {"met": latency and accuracy, "why": "; ".join(why) or None}


def _over(step: dict[str, Any], target_ms: float) -> bool:
    """The step's p95 exceeds the target, or some request got no answer (no latency kept)."""
    return step["p95_ms"] is None or step["p95_ms"] > target_ms or step["errors"] > 0


def _first_over(steps: list[dict[str, Any]], target_ms: float) -> int | None:
    return next((s["clients"] for s in steps if _over(s, target_ms)), None)


def _margin(step: dict[str, Any]) -> float:
    """Accuracy minus floor, rounded to 9 digits (both are fractions of the same images)."""
    if step["accuracy"] is None or step["floor_accuracy"] is None:
        return -1.0
    return round(step["accuracy"] - step["floor_accuracy"], 9)


def drift_verdict(agreement: dict[str, float | None], epsilon: float) -> dict[str, Any]:
    """Issue #17's drift target on the judged window's agreement with the last exit: >= 1 - ``epsilon`` with
    live calibration, < 1 - ``epsilon`` without."""
    bound = round(1 - epsilon, 9)
    live, fixed = agreement["live"], agreement["fixed"]
    live_ok = live is not None and round(live, 9) >= bound
    fixed_below = fixed is not None and round(fixed, 9) < bound
    return {
        "bound": bound,
        "live": live,
        "fixed": fixed,
        "live_ok": live_ok,
        "fixed_below": fixed_below,
        "met": live_ok and fixed_below,
    }


def shadowed_before(run: Run, fraction: float) -> float | None:
    """Shadowed images (``dynadapter_shadow_images_total``, every exit) from ``run``'s start until its last
    ``fraction`` began: what the live window took in before the judging."""
    since = run.start + (1 - fraction) * run.seconds
    totals = [
        (at, sum(v or 0.0 for k, v in values.items() if k.startswith("dynadapter_shadow_images_total")))
        for at, values in run.scrapes
    ]
    before = [total for at, total in totals if at <= run.start]
    until = [total for at, total in totals if at <= since]
    return until[-1] - before[-1] if before and until else None


def judged_samples(run: Run, fraction: float) -> list[Sample]:
    """The samples sent in the last ``fraction`` of ``run``."""
    since = run.start + (1 - fraction) * run.seconds
    return [s for s in run.samples if s.at >= since]


# -- report ------------------------------------------------------------------------------------------------------


def report(
    inputs: AdaptInputs,
    refs: References,
    probe: Run,
    target_ms: float,
    ramp_runs: dict[str, list[Run]],
    drift_runs: dict[str, list[Run]],
    config: AdaptBenchConfig,
    load_before: float,
) -> dict[str, Any]:
    from dynadapter.bench.corruptions import SEVERITIES

    yardsticks: dict[str, Any] = {"last": refs.last_clean}
    yardsticks |= {"floor": refs.floor_correct} if refs.floor is None else {}
    ramp_steps = {
        name: [_with_floor(summarize_run(r, **yardsticks), refs.floor) for r in runs]
        for name, runs in ramp_runs.items()
    }
    clean, drifted = {"last": refs.last_clean}, {"last": refs.last_drifted}
    window = {name: judged_samples(runs[1], config.judge_fraction) for name, runs in drift_runs.items()}
    judged = {name: stats(samples, last=refs.last_drifted) for name, samples in window.items()}
    by_kind = {
        name: {
            kind: stats([s for s in samples if inputs.kinds[s.image] == kind], last=refs.last_drifted)["agreement"]
            for kind in config.corruptions
        }
        for name, samples in window.items()
    }
    manifest = inputs.manifest
    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": serve.machine(config.providers, load_before),
        "model": {
            "model_repo": str(inputs.model_repo),
            "name": manifest.name,
            "exits": len(manifest.segments),
            "gflops_full": manifest.gflops_full,
            "modes": {mode: choice.model_dump(exclude_none=True) for mode, choice in manifest.modes.items()},
        },
        "images": {
            "data": inputs.data,
            "split_seed": inputs.seed,
            "count": len(inputs.clean.bodies),
            "photo_size": list(config.photo_size),
            "format": "phone JPEG (quality 90, EXIF orientation 6), multipart",
            "corruptions": {kind: SEVERITIES[kind][config.severity - 1] for kind in config.corruptions},
            "severity": config.severity,
            "last_exit_accuracy": {
                "clean": _accuracy(refs.last_clean, inputs.clean.targets),
                "drifted": _accuracy(refs.last_drifted, inputs.drifted.targets),
            },
        },
        "settings": config.model_dump(mode="json", exclude={"docs", "model_repo", "run_dir"}),
        "ramp": {
            "target_p95_ms": target_ms,
            "target_source": "given"
            if config.target_p95_ms
            else f"{config.target_factor:g} x fixed balanced p95 at 1 client",
            "probe": summarize_run(probe),
            "accuracy_floor": config.accuracy_floor,
            "steps": ramp_steps,
            "timelines": {
                name: timeline(runs, config.bucket_s, [yardsticks] * len(runs)) for name, runs in ramp_runs.items()
            },
            "verdict": ramp_verdict(ramp_steps, target_ms),
        },
        "drift": {
            "epsilon": config.epsilon,
            "phases_s": [config.clean_s, config.drift_s],
            "judge_fraction": config.judge_fraction,
            "phases": {
                name: [summarize_run(runs[0], **clean), summarize_run(runs[1], **drifted)]
                for name, runs in drift_runs.items()
            },
            "timelines": {name: timeline(runs, config.bucket_s, [clean, drifted]) for name, runs in drift_runs.items()},
            "judged": judged,
            "judged_agreement_by_corruption": by_kind,
            "shadowed_before_judged": shadowed_before(drift_runs["live"][1], config.judge_fraction),
            "verdict": drift_verdict({name: row["agreement"] for name, row in judged.items()}, config.epsilon),
        },
        "figures": {name: str(path) for name, path in FIGURES.items()},
    }


def _with_floor(row: dict[str, Any], floor: float | None) -> dict[str, Any]:
    return row if floor is None else row | {"floor_accuracy": floor}


def _accuracy(answers: Sequence[int | None], targets: Sequence[int]) -> float | None:
    return _mean([a == t for a, t in zip(answers, targets, strict=True) if a is not None])


RAMP_HEADER = [
    "configuration",
    "clients",
    "p95 ms",
    "req/s",
    "accuracy",
    "floor accuracy",
    "agreement with last exit",
    "mean threshold",
    "deadline exits",
    "answered",
]
DRIFT_HEADER = ["server", "phase", "agreement with last exit", "accuracy", "mean threshold", "req/s", "answered"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _answered(row: dict[str, Any]) -> str:
    return f"{row['requests'] - row['errors']}/{row['requests']}"


def _ramp_lines(ramp: dict[str, Any]) -> list[str]:
    rows = [
        [
            name,
            str(s["clients"]),
            fmt(s["p95_ms"]),
            fmt(s["throughput_rps"]),
            fmt(s["accuracy"], 3),
            fmt(s.get("floor_accuracy"), 3),
            fmt(s["agreement"], 3),
            fmt(s["threshold"], 3),
            str(s["exit_reasons"].get("deadline", 0)),
            _answered(s),
        ]
        for name, steps in ramp["steps"].items()
        for s in steps
    ]
    return _table(RAMP_HEADER, rows)


def _ramp_target(ramp: dict[str, Any]) -> str:
    v, target = ramp["verdict"], ramp["target_p95_ms"]
    verdict = "met" if v["met"] else "MISSED"
    head = f"{verdict}: controller p95 <= {target:.1f} ms up to 2x the load where fixed balanced exceeds it"
    if v["balanced_exceeds_at"] is None:
        return f"{head}: {v['why']} (the controller held up to {v['controller_holds_up_to']} clients)"
    text = (
        f"{head}, with accuracy >= the floor ({ramp['accuracy_floor']}): balanced exceeds it at "
        f"{v['balanced_exceeds_at']} clients, so the controller must hold to {v['required_clients']}; it holds up to "
        f"{v['controller_holds_up_to']}; its worst p95 up to {v['required_clients']} clients is "
        f"{fmt(v['worst_p95_ms'])} ms ({fmt(v['worst_p95_over_target'], 2)}x the target), its lowest accuracy "
        f"margin over the floor {fmt(v['lowest_accuracy_margin'], 3)}"
    )
    return text + (f" ({v['why']})" if v["why"] else "")


def _saturation_text(ramp: dict[str, Any]) -> str:
    """Why a closed loop needs throughput: past saturation p95 ~ clients / throughput."""
    since = ramp["verdict"]["balanced_exceeds_at"]
    if since is None:
        return ""
    mean = {
        name: np.mean([s["throughput_rps"] for s in ramp["steps"][name] if s["clients"] >= since])
        for name in ("controller", "balanced", "threshold-1")
    }
    return (
        f"From {since} clients on, where fixed balanced exceeds the target, the configurations served "
        + ", ".join(f"{name} {value:.1f}" for name, value in mean.items())
        + f" requests/s on average (controller / balanced: {mean['controller'] / mean['balanced']:.2f}x). With "
        "clients sending back to back, p95 grows about in proportion to clients / throughput once the server is "
        "saturated: holding the target at twice the clients takes about twice the throughput of the point that "
        "just exceeded it, which cheaper exits give only as far as the work per image (decode, HTTP, batching) "
        "is in the segments they skip."
    )


def _floor_text(ramp: dict[str, Any]) -> str:
    """Why accuracy can fall under a mode floor: the controller's points are chosen by validation accuracy."""
    margin = ramp["verdict"].get("lowest_accuracy_margin")
    if margin is None or margin >= 0:
        return ""
    return (
        f"The controller's accuracy fell {-margin:.3f} under the floor's on the same photos: it picks its points "
        "by their validation accuracy (at or above the floor's), and on these photos the cheapest of them "
        "answer less accurately than the floor mode itself."
    )


def _drift_cost_text(drift: dict[str, Any]) -> str:
    """What the live server paid for its agreement in the drifted phase: threshold and throughput."""
    live, fixed = (drift["phases"][name][1] for name in ("live", "fixed"))
    ratio = live["throughput_rps"] / fixed["throughput_rps"]
    return (
        f"In the drifted phase the live server answered at a mean threshold of {fmt(live['threshold'], 3)} "
        f"(fixed: {fmt(fixed['threshold'], 3)}) and served {fmt(live['throughput_rps'])} requests/s against "
        f"{fmt(fixed['throughput_rps'])} without live calibration ({ratio:.2f}x): "
        "agreement is bought by sending more images to later exits, and by the shadow work."
    )


def _drift_lines(drift: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"{name} ({DRIFT[name]})",
            phase,
            fmt(s["agreement"], 3),
            fmt(s["accuracy"], 3),
            fmt(s["threshold"], 3),
            fmt(s["throughput_rps"]),
            _answered(s),
        ]
        for name, phases in drift["phases"].items()
        for phase, s in zip(("clean", "drifted"), phases, strict=True)
    ]
    return _table(DRIFT_HEADER, rows)


def _drift_target(drift: dict[str, Any]) -> str:
    v = drift["verdict"]
    return (
        f"{'met' if v['met'] else 'MISSED'}: agreement with the last exit over the last {drift['judge_fraction']:.0%} "
        f"of the drifted phase >= {v['bound']:.3f} with live calibration ({fmt(v['live'], 3)}: "
        f"{'met' if v['live_ok'] else 'missed'}) and below it without ({fmt(v['fixed'], 3)}: "
        f"{'yes' if v['fixed_below'] else 'no'})"
    )


def render_markdown(results: dict[str, Any]) -> str:
    section = results.get("adapt")
    if not section:
        return ""
    m, images, model, ramp, drift = (section[k] for k in ("machine", "images", "model", "ramp", "drift"))
    s, load, last = section["settings"], m["load_average_1m"], images["last_exit_accuracy"]
    corruptions = ", ".join(f"{kind} {value:g}" for kind, value in images["corruptions"].items())
    width, height = images["photo_size"]
    return "\n".join(
        [
            "## Runtime adaptation",
            "",
            f"`dynadapter bench adapt`, {section['created_utc']}: model `{model['name']}` ({model['exits']} exits, "
            f"{model['gflops_full']:.3f} GFLOPs at full depth); {images['count']} test images of `{images['data']}` "
            f"photographed as {width}x{height} phone JPEGs; {m['cpu_count']} CPU cores ({m['processor']}), "
            f"providers `{m['providers']}`, 1-minute load average {load['start']:.1f} at the start and "
            f"{load['end']:.1f} at the end (other work shared the machine). Every server: at most "
            f"{s['max_batch_size']} images a batch, {s['max_wait_ms']:g} ms of waiting for one, {s['threads']} "
            "intra-op thread(s). Clients send back to back (closed loop): past saturation, p95 grows with the "
            "client count unless the work per image shrinks.",
            "",
            f"### Load ramp\n\nClient counts {s['clients']}, {s['step_s']:g} s each per configuration, interleaved. "
            f"Target p95 {ramp['target_p95_ms']:.1f} ms ({ramp['target_source']}; fixed balanced at 1 client: "
            f"p95 {fmt(ramp['probe']['p95_ms'])} ms). Accuracy floor `{ramp['accuracy_floor']}`: "
            "`floor accuracy` is the floor's accuracy on exactly the photos that step sent.",
            "",
            *_ramp_lines(ramp),
            "",
            _saturation_text(ramp),
            "",
            _floor_text(ramp),
            "",
            f"![ramp]({section['figures']['ramp']})",
            "",
            f"### Input drift\n\n{s['drift_clients']} clients; {drift['phases_s'][0]:g} s of clean photos, then "
            f"{drift['phases_s'][1]:g} s of the same digits corrupted at severity {images['severity']} ({corruptions}; "
            f"bench/corruptions.py). Live calibration shadows {s['live_calibration']:g} of the images, re-chooses "
            f"every {s['calibration_every']} shadows over a window of {s['calibration_window']}, epsilon "
            f"{drift['epsilon']:g}; before the judged part began it had shadowed at least "
            f"{fmt(drift['shadowed_before_judged'], 0)} drifted images. "
            "Last-exit accuracy on these photos: "
            f"{fmt(last['clean'], 3)} clean, {fmt(last['drifted'], 3)} corrupted.",
            "",
            *_drift_lines(drift),
            "",
            "Agreement with the last exit over the judged part of the drifted phase, by corruption: "
            + "; ".join(
                f"{name}: " + ", ".join(f"{kind} {fmt(value, 3)}" for kind, value in kinds.items())
                for name, kinds in drift["judged_agreement_by_corruption"].items()
            )
            + ".",
            "",
            _drift_cost_text(drift),
            "",
            f"![drift]({section['figures']['drift']})",
            "",
            "Targets:",
            "",
            f"- {_ramp_target(ramp)}",
            f"- {_drift_target(drift)}",
        ]
    )
