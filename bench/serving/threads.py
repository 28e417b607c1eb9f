"""``dynadapter bench threads``: the service's throughput at each thread setting, per backend, beside its default.

The default should be within 5% of the best setting tried (issue 32, "Threads chosen by measurement").

For each backend (``--backends``) one server per setting, each a real ``dynadapter serve`` on a free loopback port
serving the same model: ``default`` (no thread flag: the cores this process may use, ``dynadapter.cpu.usable_cpus``,
without spinning), ``threads=N`` for each ``--threads`` count (onnxruntime also with its threads spinning, its
own default), and ``decode=1`` (one decode thread, runtime threads as the default). Every setting is measured
``--rounds`` times in a rotated order with only the server under measurement running (the others frozen with
SIGSTOP), ``--concurrency`` Python clients sending the run's test images back to back at ``?mode=`` ``--mode``.
Besides latency and throughput, each row has the batch occupancy of each segment over its measurements: the
mean images per segment run (``dynadapter_segment_batch_images``), which falls at deep segments as images leave.

The clients share the machine with the server (``bench serve`` has a non-Python load generator for the absolute
numbers); the comparison between settings is what this measures. Third-party imports sit inside functions: the
``dynadapter`` parser imports this module, also in the serving image.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from dynadapter import options
from dynadapter.bench.lab.images import BenchImages
from dynadapter.bench.lab.load import Measured, measure, summarize
from dynadapter.bench.lab.machine import machine
from dynadapter.bench.lab.process import ServerProcess, awake, launch
from dynadapter.bench.lab.results import fmt
from dynadapter.bench.lab.servers import DEMO_MODEL_REPO, CommaList, subset
from dynadapter.cpu import this_cpu, usable_cpus

log = logging.getLogger(__name__)

#: the sections of docs/results.json this experiment writes and renders
RESULT_KEYS = ("threads",)
BACKENDS = ("onnxruntime", "openvino")
#: how far under the best setting's throughput the default may be (issue 32)
TOLERANCE = 0.05
#: instruction-set flags worth naming beside the CPU (vector width and int8 dot products)
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
OCCUPANCY = "dynadapter_segment_batch_images"


class ThreadsBenchConfig(BaseModel):
    """What `dynadapter bench threads` measures and how; its flags are generated from these fields."""

    model_config = ConfigDict(extra="forbid")

    run_dir: Path | None = Field(None, description="the run whose test images are sent (default: the demo's)")
    model_repo: Path | None = Field(
        None, description="the model repository served (default: the demo's, built into var/model_repo when missing)"
    )
    model_name: str | None = Field(
        None,
        description="model in --model-repo (default: the demo run's model for the demo's run, else the only or first)",
    )
    backends: Annotated[list[str], CommaList, AfterValidator(subset(lambda: list(BACKENDS)))] = Field(
        list(BACKENDS), description="comma-separated runtimes to sweep"
    )
    threads: Annotated[list[Annotated[int, Field(ge=1)]], CommaList] = Field(
        [], description="runtime thread counts to try, comma-separated (default: 1 to the cores this process may use)"
    )
    concurrency: int = Field(32, ge=1, description="clients sending back to back")
    mode: str = Field("balanced", description="the mode every request asks for")
    duration: float = Field(10.0, gt=0, description="seconds per measurement, at most")
    requests: int = Field(100_000, ge=1, description="requests per measurement, at most")
    rounds: int = Field(3, ge=1, description="measurements of each setting")
    images: int = Field(500, ge=1, description="test images sent, cycled")
    max_batch_size: int = Field(16, ge=1, description="every server's batch limit")
    max_wait_ms: float = Field(5.0, ge=0, description="every server's longest wait for a batch to fill, in ms")
    docs: Path = Field(Path("docs"), description="where results.{json,md} go")


@dataclass(frozen=True)
class Setting:
    """One server of the sweep: its backend, its name in the table and the flags that make it."""

    backend: str
    name: str
    flags: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.name}"


def settings_for(backend: str, thread_counts: list[int]) -> list[Setting]:
    """The settings tried for one backend: the default first, then each thread count (onnxruntime: without
    and with spinning), then one decode thread."""
    found = [Setting(backend, "default", ())]
    for n in thread_counts:
        found.append(Setting(backend, f"threads={n}", ("--intra-op-threads", str(n))))
        if backend == "onnxruntime":
            found.append(Setting(backend, f"threads={n} spinning", ("--intra-op-threads", str(n), "--allow-spinning")))
    found.append(Setting(backend, "decode=1", ("--decode-workers", "1")))
    return found


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "threads",
        help="the service's throughput at each runtime-thread setting, per backend, beside its default",
        description=__doc__.splitlines()[0],
    )
    options.add_arguments(p, ThreadsBenchConfig)


def run(args: argparse.Namespace) -> None:
    threads_benchmark(options.from_args(ThreadsBenchConfig, args))


def threads_benchmark(config: ThreadsBenchConfig) -> None:
    """Run the sweep `config` describes and write its section of docs/results.{json,md}."""
    from dynadapter.bench.lab.images import bench_images
    from dynadapter.bench.lab.results import update_results
    from dynadapter.errors import RunDirError
    from dynadapter.export.demo import DEMO_RUNS, build_demo_repo, demo_model_name

    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request at INFO
    run_dir = config.run_dir or next(iter(DEMO_RUNS.values()))
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}: pass --run-dir (a `dynadapter train` output)")
    repo = config.model_repo or build_demo_repo(DEMO_MODEL_REPO)
    # the model of the images sent: for the demo's run, its model in the demo repository (not the fixture beside it)
    demo_name = demo_model_name(run_dir)
    section = sweep(repo, config.model_name or demo_name, bench_images(run_dir, config.images), config)
    update_results(config.docs, {"threads": section})
    print(render_markdown({"threads": section}))


def sweep(repo: Path, model_name: str | None, images: BenchImages, config: ThreadsBenchConfig) -> dict[str, Any]:
    """Start every setting's server, measure them in rotation and report (the ``threads`` section)."""
    from dynadapter.contract.model_repository import load_model

    load_before = os.getloadavg()[0]
    name = load_model(repo, model_name).manifest.name
    counts = config.threads or list(range(1, usable_cpus() + 1))
    settings = [s for backend in config.backends for s in settings_for(backend, counts)]
    commands = {s.key: (server_argv(repo, name, s, config), "/readyz", "/classify") for s in settings}
    with contextlib.ExitStack() as stack:
        servers = launch(stack, commands)
        served = {key: serving(server) for key, server in servers.items()}
        measured, occupancy = asyncio.run(measure_rotated(servers, settings, images, config))
    rows = [
        {
            **summarize(s.key, config.concurrency, measured[s.key]),
            "backend": s.backend,
            "setting": s.name,
            "flags": list(s.flags),
            "precision": served[s.key],
            "occupancy": occupancy[s.key],
        }
        for s in settings
    ]
    cpu = this_cpu()
    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine("cpu", load_before),
        "cpu": {
            "model": cpu.model,
            "usable_cpus": usable_cpus(),
            "flags": [flag for flag in VECTOR_FLAGS if flag in cpu.flags],
        },
        "model": {"repo": str(repo), "name": name},
        "settings": {
            "concurrency": config.concurrency,
            "mode": config.mode,
            "duration_s": config.duration,
            "rounds": config.rounds,
            "images": len(images.bodies),
            "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms,
        },
        "results": rows,
        "verdicts": verdicts(rows),
    }


def server_argv(repo: Path, name: str, setting: Setting, config: ThreadsBenchConfig) -> list[str]:
    """`dynadapter serve` for one setting (without --port): the backend forced, its precision the fastest it has."""
    return [
        *(sys.executable, "-m", "dynadapter", "serve", "--host", "127.0.0.1", "--log-level", "warning"),
        *("--providers", "cpu", "--backend", setting.backend, "--model-repo", str(repo)),
        *("--models", name, "--model-name", name),  # that model alone: the others may lack this backend's segments
        *("--grpc-port", "0"),  # no gRPC listener: servers started side by side would all want 8001
        *("--max-batch-size", str(config.max_batch_size), "--max-wait-ms", str(config.max_wait_ms)),
        *setting.flags,
    ]


def serving(server: ServerProcess) -> str:
    """The precision key the server serves (from `dynadapter_serving_info`), e.g. int8-openvino."""
    families = scrape(server)
    return next(
        (s.labels["precision"] for f in families if f.name == "dynadapter_serving_info" for s in f.samples), "?"
    )


def scrape(server: ServerProcess) -> list[Any]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=30).text))


def occupancy_totals(families: list[Any]) -> dict[str, tuple[float, float]]:
    """segment -> (images run, segment runs) summed over every model version, from one scrape."""
    totals: dict[str, tuple[float, float]] = {}
    for family in families:
        if family.name != OCCUPANCY:
            continue
        for sample in family.samples:
            part = sample.name.removeprefix(OCCUPANCY)
            if part in ("_sum", "_count"):
                images, runs = totals.get(sample.labels["segment"], (0.0, 0.0))
                totals[sample.labels["segment"]] = (
                    (images + sample.value, runs) if part == "_sum" else (images, runs + sample.value)
                )
    return totals


def occupancy_means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> list[float | None]:
    """Mean images per run of each segment (segment 0 first) between two scrapes; None where none ran."""
    means = []
    for segment in sorted(after, key=int):
        images = after[segment][0] - before.get(segment, (0.0, 0.0))[0]
        runs = after[segment][1] - before.get(segment, (0.0, 0.0))[1]
        means.append(images / runs if runs else None)
    return means


async def measure_rotated(
    servers: dict[str, ServerProcess], settings: list[Setting], images: BenchImages, config: ThreadsBenchConfig
) -> tuple[dict[str, Measured], dict[str, list[float | None]]]:
    """Every setting ``rounds`` times in a rotated order, one server awake at a time; and each one's occupancy
    over all its measurements."""
    for server in servers.values():
        server.pause()
    measured = {s.key: Measured() for s in settings}
    first: dict[str, dict[str, tuple[float, float]]] = {}
    last: dict[str, dict[str, tuple[float, float]]] = {}
    for round_index in range(config.rounds):
        shift = round_index % len(settings)
        for setting in [*settings[shift:], *settings[:shift]]:
            with awake(servers[setting.key]) as server:
                url = f"{server.classify_url}?mode={config.mode}"
                before = occupancy_totals(await asyncio.to_thread(scrape, server))
                samples, seconds = await measure(url, images, config.concurrency, config.requests, config.duration)
                last[setting.key] = occupancy_totals(await asyncio.to_thread(scrape, server))
                first.setdefault(setting.key, before)
            measured[setting.key].add(samples, seconds)
            log.info("round %d/%d, %s: %d requests in %.1f s", round_index + 1, config.rounds, setting.key,
                     len(samples), seconds)  # fmt: skip
    # The warm-up request of each measurement (lab.load.measure) falls between the scrapes too: a handful of
    # batches among thousands.
    return measured, {key: occupancy_means(first[key], last[key]) for key in last}


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend: the default's throughput against the best setting tried, and whether it is within 5%."""
    out = []
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend and row["throughput_rps"]]
        default = next((row for row in mine if row["setting"] == "default"), None)
        if default is None:
            continue
        best = max(mine, key=lambda row: row["throughput_rps"])
        ratio = default["throughput_rps"] / best["throughput_rps"]
        out.append(
            {
                "backend": backend,
                "default_rps": default["throughput_rps"],
                "best": best["setting"],
                "best_rps": best["throughput_rps"],
                "ratio": ratio,
                "within_tolerance": ratio >= 1 - TOLERANCE,
            }
        )
    return out


def render_markdown(results: dict[str, Any]) -> str:
    section = results.get("threads")
    if not section:
        return ""
    cpu, s = section["cpu"], section["settings"]
    lines = [
        "## Runtime threads (`dynadapter bench threads`)",
        "",
        f"On {cpu['model']} ({cpu['usable_cpus']} usable core(s); {', '.join(cpu['flags']) or 'no AVX2'}), load "
        f"average {section['machine']['load_average_1m']['start']:.1f} at the start. {s['concurrency']} Python "
        f"clients on the same machine, `mode={s['mode']}`, {s['images']} test images, {s['rounds']} round(s) of "
        f"{s['duration_s']:g} s per setting; occupancy: mean images per run of each segment, first to last.",
        "",
        "| backend | setting | precision | p50 ms | p95 ms | req/s | rounds | occupancy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in section["results"]:
        rounds = row["throughput_rps_rounds"]
        spread = f"{min(rounds):.1f}-{max(rounds):.1f}" if rounds else "-"
        occupancy = " / ".join(fmt(mean, 1) for mean in row["occupancy"]) or "-"
        lines.append(
            f"| {row['backend']} | {row['setting']} | {row['precision']} | {fmt(row['p50_ms'], 2)} | "
            f"{fmt(row['p95_ms'], 2)} | {fmt(row['throughput_rps'])} | {spread} | {occupancy} |"
        )
    lines.append("")
    for v in section["verdicts"]:
        lines.append(
            f"- {v['backend']}: the default serves {100 * v['ratio']:.1f}% of the best setting tried "
            f"({v['best']}, {v['best_rps']:.1f} req/s): {'within' if v['within_tolerance'] else 'NOT within'} "
            f"{100 * TOLERANCE:.0f}%."
        )
    return "\n".join(lines)
