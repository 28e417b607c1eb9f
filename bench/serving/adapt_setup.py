"""What ``dynadapter bench adapt`` (``serving.adapt``) runs on and leaves behind: its flags, its inputs (the
model and its test digits photographed, clean and corrupted), its configurations (``RAMP``, ``DRIFT``) and
the records a stretch of load leaves (``Run``, ``References``), which ``serving.adapt_report`` reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field

from dynadapter import options
from dynadapter.bench.lab.images import BenchImages, camera_bodies, split_digits
from dynadapter.bench.lab.load import Sample
from dynadapter.bench.lab.servers import DEMO_MODEL_REPO, ServerOptions
from dynadapter.bench.serving.config import Variant
from dynadapter.errors import DataError

log = logging.getLogger(__name__)

#: the ramp's configurations; "fixed" is one server without the controller, serving both fixed knobs
RAMP = {
    "controller": Variant("controller", "?mode=auto", "latency controller on, requests with mode=auto"),
    "balanced": Variant("fixed", "?mode=balanced", "fixed mode balanced"),
    "threshold-1": Variant("fixed", "?threshold=1", "fixed threshold 1 (no early exit)"),
}
#: the drift scenario's servers, both asked with no knob (their default operating point)
DRIFT = {"live": "live calibration on", "fixed": "live calibration off"}


def _size(value: object) -> object:
    """``WxH`` (or ``W,H``) -> (W, H)."""
    if isinstance(value, str):
        width, sep, height = value.lower().replace(",", "x").partition("x")
        if not sep:
            raise ValueError("expected WIDTHxHEIGHT, e.g. 1600x1200")
        return (width, height)
    return value


def _kinds(kinds: list[str]) -> list[str]:
    from dynadapter.training.corruptions import KINDS

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
        description="corruptions of the drifted photos, comma-separated (training/corruptions.py)",
    )
    severity: int = Field(3, ge=1, le=5, description="corruption severity, 1-5 (training/corruptions.py's table)")
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


@dataclass(frozen=True)
class AdaptInputs:
    """The model the adapt benchmark serves and its test digits as phone-JPEG uploads, clean and corrupted."""

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
    from dynadapter.contract.model_repository import load_model
    from dynadapter.export.demo import DEMO_RUNS, build_demo_repo

    repo, name = config.model_repo, config.model_name
    if repo is None:
        repo, name = build_demo_repo(DEMO_MODEL_REPO), name or next(iter(DEMO_RUNS))
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
        return run.data, run.train.seed
    data = str((training or {}).get("data", ""))
    if not data.startswith("builtin:"):
        raise DataError(f"the model records no builtin data set ({data or 'none'}): pass --run-dir, its training run")
    return data, 0


def corrupted_digits(digits: Sequence[np.ndarray], kinds: Sequence[str], severity: int) -> list[np.ndarray]:
    """Digit i corrupted by ``kinds[i]`` at ``severity`` with seed i (training/corruptions.py)."""
    from dynadapter.training.corruptions import corrupt

    return [
        np.asarray(corrupt(d, kind, severity, seed=i)) for i, (d, kind) in enumerate(zip(digits, kinds, strict=True))
    ]


@dataclass
class Run:
    """One stretch of load on one server: its samples, its start (time.perf_counter) and length in seconds,
    and the adaptation metrics scraped meanwhile as (time.perf_counter, series -> value)."""

    clients: int
    samples: list[Sample]
    start: float
    seconds: float
    scrapes: list[tuple[float, dict[str, float | None]]] = field(default_factory=list)


@dataclass(frozen=True)
class References:
    """Per image: the class id the last exit answers (clean and drifted photos), and whether the floor mode
    answers the clean photo right (None with a numeric floor)."""

    last_clean: list[int | None]
    last_drifted: list[int | None]
    floor_correct: list[bool] | None
    floor: float | None  # a numeric floor
