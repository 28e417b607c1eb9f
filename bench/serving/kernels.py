"""``dynadapter bench kernels``: each precision's segments alone, without a server: the CPU's ceiling for this model.

For every precision the model repository holds (fp32 ONNX on onnxruntime, fp32 and int8 OpenVINO IR), the
segments are opened through the service's own backends (``service/backends``, the kernels the service runs) with
the threads the service gives them (``--threads``, default the service's default: 0, each runtime's own), and
run on batches of ``--batch-sizes`` random images (1..64; the kernels' speed does not depend on the pixels):
each segment alone on its own input (the previous segment's hidden state, every exit head computed) and the
whole cascade at full depth, segment after segment. Each point is timed for ``--duration`` seconds after one
warm-up run; the median run counts.

Reported per precision, segment and batch size: images/s and GMAC/s (the manifest's GFLOPs count a multiply-add
once, so they are GMACs). The **ceiling** is the best whole-cascade GMAC/s over the batch sizes of the
precision the service serves by default on this machine (``service/backends/choice.py``). Where
docs/results.json has a ``serve`` section (``bench serve``), the **end-to-end share** is its ``balanced`` rate
at the highest connection count (answered images/s x GFLOPs per image) over that ceiling; issue 32's target
is >= 80%.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dynadapter import options
from dynadapter.bench.lab.machine import machine
from dynadapter.bench.lab.results import fmt
from dynadapter.bench.lab.servers import DEMO_MODEL_REPO, CommaList

log = logging.getLogger(__name__)

#: the sections of docs/results.json this experiment writes and renders
RESULT_KEYS = ("kernels",)
#: issue 32's bound on the end-to-end share of the kernel ceiling
E2E_TARGET = 0.8
CASCADE = "cascade"


class KernelsConfig(BaseModel):
    """What `dynadapter bench kernels` measures; its flags are generated from these fields."""

    model_config = ConfigDict(extra="forbid")

    model_repo: Path = Field(DEMO_MODEL_REPO, description="the model repository (default: the demo's, `make serve`)")
    model_name: str | None = Field(
        None,
        description="model in --model-repo (default: the one docs/results.json's `bench serve` section measured, "
        "else the only or first one)",
    )
    batch_sizes: Annotated[list[Annotated[int, Field(ge=1)]], CommaList] = Field(
        [1, 2, 4, 8, 16, 32, 64], min_length=1, description="batch sizes, comma-separated"
    )
    threads: int = Field(
        0, ge=0, description="intra-op threads of every runtime; 0: the service's default (each runtime's own)"
    )
    duration: float = Field(1.0, gt=0, description="seconds of timed runs per precision, segment and batch size")
    docs: Path = Field(Path("docs"), description="where results.{json,md} go")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kernels",
        help="each precision's segments alone at batch 1-64: the CPU's ceiling and the served share of it",
        description=__doc__.splitlines()[0],
    )
    options.add_arguments(p, KernelsConfig)


def run(args: argparse.Namespace) -> None:
    kernels_benchmark(options.from_args(KernelsConfig, args))


def kernels_benchmark(config: KernelsConfig) -> dict[str, Any]:
    """Measure, write the ``kernels`` section of docs/results.{json,md} and return it."""
    import json

    from dynadapter.bench.lab.results import RESULTS_JSON, update_results

    load_before = os.getloadavg()[0]
    path = config.docs / RESULTS_JSON
    serve = json.loads(path.read_text()).get("serve") if path.is_file() else None
    if config.model_name is None and serve and (config.model_repo / serve["model"]["name"]).is_dir():
        # the model `bench serve` measured, so that the end-to-end share compares one model with itself
        config = config.model_copy(update={"model_name": serve["model"]["name"]})
    section = measure_kernels(config, load_before)
    section["end_to_end"] = end_to_end_share(section, serve)
    update_results(config.docs, {"kernels": section})
    print(render_section(section))
    return section


def _backend(model: Any, precision: str, threads: int) -> Any:
    from dynadapter.contract.model_repository import FP32_ONNX
    from dynadapter.service.backends.onnxruntime import OnnxRuntimeBackend
    from dynadapter.service.backends.openvino import OpenVinoBackend

    classes = model.manifest.num_classes
    if precision == FP32_ONNX:
        return OnnxRuntimeBackend(model.segment_paths, intra_op_threads=threads, num_classes=classes)
    return OpenVinoBackend(model.segment_paths, threads, classes)


def time_call(call: Callable[[], Any], duration_s: float) -> float:
    """The median seconds of ``call`` run back to back for about ``duration_s`` (at least 3 runs), after one
    untimed warm-up run."""
    call()
    runs: list[float] = []
    end = time.perf_counter() + duration_s
    while len(runs) < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def measure_precision(model: Any, precision: str, config: KernelsConfig) -> list[dict[str, Any]]:
    """Rows of one precision: each segment alone and the whole cascade, at every batch size."""
    backend = _backend(model, precision, config.threads)
    manifest = model.manifest
    height, width = manifest.preprocessing.size
    rng = np.random.default_rng(0)
    rows = []
    last = backend.num_segments - 1
    for batch in config.batch_sizes:
        images = rng.standard_normal((batch, 3, height, width), dtype=np.float32)
        inputs = [images]
        for k in range(last):  # each segment's own input: the previous one's hidden state
            inputs.append(backend.run(k, inputs[k], True)[0])
        for k in range(backend.num_segments):
            seconds = time_call(lambda k=k, x=inputs[k]: backend.run(k, x, True), config.duration)
            rows.append(_row(precision, str(k), batch, seconds, manifest.segments[k].gflops))

        def cascade(images: np.ndarray = images) -> None:
            hidden = images
            for k in range(backend.num_segments):
                hidden, _ = backend.run(k, hidden, True)

        seconds = time_call(cascade, config.duration)
        rows.append(_row(precision, CASCADE, batch, seconds, manifest.gflops_full))
        log.info("%s batch %d: cascade %.1f images/s", precision, batch, batch / seconds)
    return rows


def _row(precision: str, segment: str, batch: int, seconds: float, gmacs: float) -> dict[str, Any]:
    return {
        "precision": precision,
        "segment": segment,
        "batch": batch,
        "ms": seconds * 1000,
        "images_s": batch / seconds,
        "gmac_s": batch * gmacs / seconds,
    }


def default_precision(repo: Path, name: str) -> str:
    """The precision the service serves this model at on this machine by default (``backends/choice.py``)."""
    from dynadapter.service.backends.choice import check_choice
    from dynadapter.service.settings import Settings

    _, choice = check_choice(Settings(model_repo=repo, providers="cpu"), name, None)  # type: ignore[arg-type]
    return choice.precision_key


def measure_kernels(config: KernelsConfig, load_before: float) -> dict[str, Any]:
    """The ``kernels`` section without its end-to-end share: rows, ceilings and what was measured on what."""
    from dynadapter.contract.model_repository import load_model

    manifest = load_model(config.model_repo, config.model_name).manifest
    rows = []
    for precision in manifest.precision_keys:
        rows += measure_precision(load_model(config.model_repo, manifest.name, None, precision), precision, config)
    ceilings = {
        precision: max(
            (row for row in rows if row["precision"] == precision and row["segment"] == CASCADE),
            key=lambda row: row["gmac_s"],
        )
        for precision in manifest.precision_keys
    }
    return {
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine("cpu", load_before),
        "model": {"repo": str(config.model_repo), "name": manifest.name, "gflops_full": manifest.gflops_full},
        "settings": {"threads": config.threads, "duration_s": config.duration, "batch_sizes": config.batch_sizes},
        "default_precision": default_precision(config.model_repo, manifest.name),
        "ceilings": {key: {"batch": row["batch"], "gmac_s": row["gmac_s"]} for key, row in ceilings.items()},
        "results": rows,
    }


def end_to_end_share(section: dict[str, Any], serve: dict[str, Any] | None) -> dict[str, Any] | None:
    """``bench serve``'s ``balanced`` GMAC/s at its highest connection count over the default precision's
    ceiling, judged against ``E2E_TARGET``; None without a serve section of the same model with that row and
    its GFLOPs."""
    if not serve or serve.get("model", {}).get("name") != section["model"]["name"]:
        return None
    top = max(serve["settings"]["concurrency"])
    row = next((r for r in serve["results"] if r["variant"] == "balanced" and r["concurrency"] == top), None)
    gflops = (serve.get("answers", {}).get("balanced") or {}).get("gflops_per_image")
    ceiling = section["ceilings"].get(section["default_precision"])
    if row is None or not row.get("throughput_rps") or gflops is None or not ceiling:
        return None
    served = row["throughput_rps"] * gflops
    share = served / ceiling["gmac_s"]
    return {
        "serve_created_utc": serve["created_utc"],
        "connections": top,
        "throughput_rps": row["throughput_rps"],
        "gflops_per_image": gflops,
        "served_gmac_s": served,
        "ceiling_gmac_s": ceiling["gmac_s"],
        "share": share,
        "target": E2E_TARGET,
        "met": share >= E2E_TARGET,
    }


def _table(section: dict[str, Any]) -> list[str]:
    batches = section["settings"]["batch_sizes"]
    header = ["precision", "segment", *(f"b{b} img/s" for b in batches), *(f"b{b} GMAC/s" for b in batches)]
    by = {(r["precision"], r["segment"], r["batch"]): r for r in section["results"]}
    keys = list(dict.fromkeys((r["precision"], r["segment"]) for r in section["results"]))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for precision, segment in keys:
        rate = [fmt(by[precision, segment, b]["images_s"]) for b in batches]
        gmac = [fmt(by[precision, segment, b]["gmac_s"]) for b in batches]
        lines.append("| " + " | ".join([precision, segment, *rate, *gmac]) + " |")
    return lines


def _share_line(section: dict[str, Any]) -> str:
    share = section.get("end_to_end")
    if not share:
        return "End to end: no `bench serve` section with a `balanced` row to compare (run `dynadapter bench serve`)."
    verdict = "met" if share["met"] else f"MISSED by {share['target'] - share['share']:.0%} points"
    return (
        f"End to end: `balanced` at {share['connections']} connections served {fmt(share['throughput_rps'])} "
        f"images/s x {share['gflops_per_image']:.3f} GMAC = {fmt(share['served_gmac_s'])} GMAC/s, "
        f"{share['share']:.0%} of the {section['default_precision']} ceiling "
        f"({fmt(share['ceiling_gmac_s'])} GMAC/s); target >= {share['target']:.0%}: {verdict} "
        f"(serve run of {share['serve_created_utc']})."
    )


def render_section(section: dict[str, Any]) -> str:
    m, s = section["machine"], section["settings"]
    ceilings = "; ".join(
        f"{key}: {fmt(c['gmac_s'])} GMAC/s at batch {c['batch']}" for key, c in section["ceilings"].items()
    )
    threads = f"{s['threads']} intra-op thread(s)" if s["threads"] else "each runtime's default threads"
    return "\n".join(
        [
            "## Kernel ceiling",
            "",
            f"`dynadapter bench kernels`, {section['created_utc']}: model `{section['model']['name']}` "
            f"({section['model']['gflops_full']:.3f} GMAC at full depth), each precision's segments alone through "
            f"the service's backends, {threads}, median of {s['duration_s']:g} s of runs per point; "
            f"{m['cpu_count']} CPU cores ({m['processor']}), 1-minute load average "
            f"{m['load_average_1m']['start']:.1f}. The service serves `{section['default_precision']}` here.",
            "",
            *_table(section),
            "",
            f"Ceilings (whole cascade, full depth, best batch): {ceilings}.",
            "",
            _share_line(section),
        ]
    )


def render_markdown(results: dict[str, Any]) -> str:
    """The kernels section of the results page (empty without one)."""
    section = results.get("kernels")
    return render_section(section) if section else ""
