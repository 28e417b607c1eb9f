"""What the serving benchmarks serve: the trained run, its model repository, the static single-graph baseline
built from it, and the command line of each server (this service on either, LitServe on the baseline)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynadapter.bench.lab.images import BenchImages
from dynadapter.bench.lab.servers import DEMO_MODEL_REPO, service_argv
from dynadapter.bench.serving.config import TUNED, VARIANTS, ServeBenchConfig
from dynadapter.errors import RunDirError

log = logging.getLogger(__name__)

#: Where `make triton-venv` puts the Triton peer's environment (nvidia-pytriton pins numpy < 2).
TRITON_VENV_PYTHON = Path("var") / "triton-venv" / "bin" / "python"


@dataclass(frozen=True)
class BenchInputs:
    """The run, the model repository and model name serving it, and the static baseline built from the run."""

    run_dir: Path
    model_repo: Path
    model_name: str
    static_run: Path  # the static graph as a run directory (PyTorch) ...
    static_repo: Path  # ... and as a one-segment model repository (onnxruntime)


def prepare_inputs(config: ServeBenchConfig, work: Path) -> BenchInputs:
    """Resolve the run and the model repository; build the static graph from the run (in the plain run with its
    int8 OpenVINO IR where the CPU runtime is installed, as `dynadapter export` does)."""
    from dynadapter.bench.serving.static_graph import export_static_graph
    from dynadapter.contract.model_repository import load_model
    from dynadapter.export.demo import DEMO_RUNS, build_demo_repo, demo_model_name
    from dynadapter.export.exporter import export_run
    from dynadapter.export.precisions import cpu_runtime_precisions

    run_dir = config.run_dir or next(iter(DEMO_RUNS.values()))  # the demo's run (demo/dinov2-mnist)
    if not run_dir.is_dir():
        raise RunDirError(f"no run directory at {run_dir}: pass --run-dir (a `dynadapter train` output)")
    demo_name = demo_model_name(run_dir)
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
    # The plain run's static graph is exported as `dynadapter export` does by default (int8 beside fp32 where the
    # CPU runtime is installed), so that `static` is served at the precision the cascade is, whichever variants
    # run; the Triton int8 peer reads the same IR. --photos and --precisions (which read these flags too) need fp32.
    plain = not (config.photos or config.precisions)
    static_run, static_repo = export_static_graph(
        run_dir, work / "static", name, tuple(cpu_runtime_precisions()) if plain else ("fp32",)
    )
    return BenchInputs(run_dir, repo, name, static_run, static_repo)


def server_commands(inputs: BenchInputs, config: ServeBenchConfig) -> dict[str, tuple[list[str], str, str]]:
    """Server name -> (argv without --port, readiness path, classify path): each server at ``config``'s threading
    and, with ``--tuned-threads``, again as ``<name>+tuned`` (that many threads, onnxruntime not spinning); the
    Triton peers where ``--triton-python`` (or var/triton-venv) has nvidia-pytriton. Where a gRPC variant is
    chosen, each cascade server listens for gRPC on a free port of its own (bench/serving/grpc_rounds.py)."""
    commands = _server_commands(inputs, config)
    python = triton_python(config)
    if python is not None:
        commands |= _triton_commands(python, inputs, config)
    if config.tuned_threads:
        tuned = config.model_copy(update={"threads": config.tuned_threads, "spinning": False})
        commands |= {
            name + TUNED: spec
            for name, spec in server_commands(inputs, tuned.model_copy(update={"tuned_threads": 0})).items()
        }
    return commands


def triton_python(config: ServeBenchConfig) -> Path | None:
    """The interpreter that runs the Triton peers: ``--triton-python``, else var/triton-venv's where it exists."""
    if config.triton_python is not None:
        return config.triton_python
    return TRITON_VENV_PYTHON if TRITON_VENV_PYTHON.exists() else None


def _triton_commands(
    python: Path, inputs: BenchInputs, config: ServeBenchConfig
) -> dict[str, tuple[list[str], str, str]]:
    from dynadapter.bench.serving.triton import INFER_PATH, READY_PATH, command

    batching = (config.threads, config.max_batch_size, config.max_wait_ms)
    return {
        f"triton-{kind}": (command(python, kind, inputs.static_repo, *batching), READY_PATH, INFER_PATH)
        for kind in ("onnx", "int8")
        if f"triton-{kind}" in config.variants
    }


def _server_commands(inputs: BenchInputs, config: ServeBenchConfig) -> dict[str, tuple[list[str], str, str]]:
    batching = ["--max-batch-size", str(config.max_batch_size)]
    service = service_argv(config, config.providers)
    litserve = [
        sys.executable,
        "-m",
        "dynadapter.bench.serving.litserve_apps",
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
            [
                *service,
                "--model-repo",
                str(inputs.model_repo),
                "--models",
                inputs.model_name,
                "--model-name",
                inputs.model_name,
                *_grpc(config),
            ],
            "/readyz",
            "/classify",
        ),
        "static": ([*service, "--model-repo", str(inputs.static_repo)], "/readyz", "/classify"),
        "litserve-onnx": ([*litserve, "onnx", str(inputs.static_repo)], "/health", "/predict"),
        "litserve-torch": ([*litserve, "torch", str(inputs.static_run)], "/health", "/predict"),
    }


def _grpc(config: ServeBenchConfig) -> list[str]:
    """A free ``--grpc-port`` where the plain run measures a gRPC variant (after service_argv's ``--grpc-port 0``:
    the last flag wins), else nothing (``--photos`` and ``--precisions`` read these flags too)."""
    from dynadapter.bench.lab.process import free_port

    plain = not (config.photos or config.precisions)
    if not plain or not any(VARIANTS[name].protocol == "grpc" for name in config.variants):
        return []
    return ["--grpc-port", str(free_port())]


def litserve_accelerator(providers: str) -> str:
    """LitServe on the device the service picks for the same preference, so that both run on the same hardware."""
    from dynadapter.service.backends.onnxruntime import CUDA, select_providers

    return "cuda" if select_providers(providers)[0] == CUDA else "cpu"


def upload_png(body: bytes) -> bytes:
    """The PNG inside a ``lab.images.multipart_body`` upload (its one part's content)."""
    from dynadapter.bench.lab.images import BOUNDARY

    head_end = body.index(b"\r\n\r\n") + 4
    return body[head_end : body.rindex(f"\r\n--{BOUNDARY}--".encode())]


def request_bodies(
    images: BenchImages, protocol: str, batched: bool, parameters: dict[str, Any] | None = None
) -> tuple[list[bytes], str]:
    """The bodies a variant sends (``Variant.protocol``: the multipart uploads, or the same PNGs as OIP JSON
    requests, ``[1, 1]`` for Triton's batched model) and their content type."""
    from dynadapter.bench.lab.images import HEADERS
    from dynadapter.bench.serving.triton import oip_body

    if protocol == "multipart":
        return list(images.bodies), HEADERS["content-type"]
    return [oip_body(upload_png(body), batched, parameters) for body in images.bodies], "application/json"
