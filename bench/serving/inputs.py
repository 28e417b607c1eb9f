"""What the serving benchmarks serve: the trained run, its model repository, the static single-graph baseline
built from it, and the command line of each server (this service on either, LitServe on the baseline)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from dynadapter.bench.lab.servers import DEMO_MODEL_REPO, service_argv
from dynadapter.bench.serving.config import ServeBenchConfig
from dynadapter.errors import RunDirError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchInputs:
    """The run, the model repository and model name serving it, and the static baseline built from the run."""

    run_dir: Path
    model_repo: Path
    model_name: str
    static_run: Path  # the static graph as a run directory (PyTorch) ...
    static_repo: Path  # ... and as a one-segment model repository (onnxruntime)


def prepare_inputs(config: ServeBenchConfig, work: Path) -> BenchInputs:
    """Resolve the run and the model repository; build the static graph from the run."""
    from dynadapter.bench.serving.static_graph import export_static_graph
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


def server_commands(inputs: BenchInputs, config: ServeBenchConfig) -> dict[str, tuple[list[str], str, str]]:
    """Server name -> (argv without --port, readiness path, classify path)."""
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
    from dynadapter.service.backends.onnxruntime import CUDA, select_providers

    return "cuda" if select_providers(providers)[0] == CUDA else "cpu"
