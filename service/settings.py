"""Service configuration: one `BaseSettings`, read from `DYNADAPTER_*` environment variables or CLI flags.

Every field carries its description; `add_settings_arguments` turns each into a `--kebab-case`
flag (dynadapter/options.py), so that `dynadapter serve` offers every setting without listing them
again. docs/configuration.md is the table of them all (a test keeps it in step with this file).
"""

import argparse
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dynadapter import options
from dynadapter.options import comma_separated, default_text, flag_name

__all__ = ["Settings", "add_settings_arguments", "default_text", "env_name", "flag_name", "settings_from_args"]

MiB = 1024 * 1024
ENV_PREFIX = "DYNADAPTER_"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def floor_accuracy(floor: str) -> float | None:
    """The accuracy a latency floor gives as a number in (0, 1], or None when it names a mode (whether the
    model has that mode is checked when it loads); `ValueError` when it is neither."""
    try:
        value = float(floor)
    except ValueError:
        if not floor.isidentifier():
            raise ValueError(f"accuracy_floor {floor!r}: neither a mode name nor an accuracy in (0, 1]") from None
        return None
    if not 0 < value <= 1:
        raise ValueError(f"accuracy_floor {floor!r}: an accuracy must be in (0, 1]")
    return value


def _floor(value: str) -> str:
    floor_accuracy(value)
    return value


class Settings(BaseSettings):
    """Every knob of `dynadapter serve`; each field `x` is also read from `DYNADAPTER_X`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=())

    model_repo: Path = Field(
        Path("model_repo"), description="Model repository folder, laid out as <name>/<version>/manifest.json."
    )
    models: Annotated[list[str], NoDecode, BeforeValidator(comma_separated)] = Field(
        [], description="Comma-separated models of the repository to load; empty: every model in it."
    )
    model_name: str | None = Field(
        None,
        description="Model answering the routes that name none (/classify without ?model=); "
        "unset: the only (or alphabetically first) loaded model.",
    )
    version_policy: Annotated[str, BeforeValidator(_lower)] = Field(
        "latest:1",
        pattern=r"^(all|latest:[1-9][0-9]*|specific:[0-9]+(,[0-9]+)*)$",
        description="Versions served of each model, as Triton's version policy: latest:N (the N highest "
        "numeric versions), all, or specific:V1,V2.",
    )
    repository_poll_s: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="Every this many seconds, load the versions the policy selects anew from the repository "
        "(new versions in, removed ones out); 0: never (use /v2/repository/models/{name}/load).",
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="TCP port of the Open Inference Protocol's gRPC service (as Triton's 8001), on the same "
        "host and models as REST; 0: no gRPC listener.",
    )
    providers: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="Execution provider: auto = CUDA when a GPU really works here, else CPU; "
        "cuda = refuse to start without a usable GPU; cpu = never use a GPU.",
    )
    backend: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="Runtime of the segments: auto = onnxruntime on a usable CUDA GPU, else the fastest "
        "precision the model has for the CPU (int8 on OpenVINO, fp32 on OpenVINO, fp32 on onnxruntime); "
        "onnxruntime or openvino force one.",
    )
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto",
        description="Precision of the served segments: auto = the fastest the chosen backend has; fp32 or "
        "int8 force one (int8 needs segments exported with --precision fp32,int8 and OpenVINO).",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="Runtime threads per segment run (onnxruntime intra-op, OpenVINO INFERENCE_NUM_THREADS); 0: the "
        "cores this process may use (its affinity mask, capped by its cgroup's CPU quota).",
    )
    allow_spinning: bool = Field(
        False,
        description="onnxruntime's idle intra-op threads spin waiting for work (onnxruntime's own default); off: "
        "they sleep between batches, leaving the cores to decoding and HTTP.",
    )
    max_batch_size: int = Field(16, ge=1, description="Most images run together through the cascade.")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        allow_inf_nan=False,
        description="How long the first request of a batch waits for others to join it, in ms.",
    )
    max_queue: int = Field(
        256, ge=1, description="Images that may wait for a batch; beyond this a request gets 503 with Retry-After."
    )
    max_body_bytes: int = Field(10 * MiB, gt=0, description="Largest request body accepted; larger gets 413.")
    max_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest image accepted, in pixels (width x height), checked before decoding "
        "(decompression bombs); larger gets 413.",
    )
    max_images_per_request: int = Field(
        64, ge=1, description="Most images in one request (several file parts, or an OIP [N] input); more gets 413."
    )
    decode_workers: int = Field(
        0,
        ge=0,
        description="Images decoded at once, on their own threads; 0: the cores this process may use (its affinity "
        "mask, capped by its cgroup's CPU quota), at most 4. "
        "Decoding memory peaks at decode_workers x max_pixels x 17 bytes (docs/images.md).",
    )
    decode_queue: int = Field(
        32,
        ge=0,
        description="Requests that may wait for a decode thread (their bodies held); beyond this a request "
        "gets 503 with Retry-After.",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        allow_inf_nan=False,
        description="Default deadline of an inference request, in seconds (a request may set a shorter one: "
        "deadline_ms, or OIP's timeout); an image whose next segment would end past it leaves with the exit "
        "it has (exit_reason deadline); 504 only when not even its first exit can answer in time.",
    )
    target_p95_ms: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Latency target: a controller moves requests that leave the knob to the service (none "
        "given, or mode=auto) to cheaper calibrated operating points while the p95 latency is above it, never "
        "below accuracy_floor, and back when load falls; unset: off.",
    )
    accuracy_floor: Annotated[str, AfterValidator(_floor)] = Field(
        "fast",
        description="Lowest operating point the latency controller may use: a mode name (its validation "
        "accuracy) or a validation accuracy in (0, 1].",
    )
    control_period_s: float = Field(
        0.5, gt=0, allow_inf_nan=False, description="How often the latency controller looks and moves, in seconds."
    )
    live_calibration: float = Field(
        0.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Fraction of images that, when there is spare capacity, run on past their answer to the "
        "last exit, so that the modes' thresholds are re-chosen on live traffic without labels; 0: off.",
    )
    live_calibration_epsilon: float = Field(
        0.02,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="Live calibration holds each early exit's agreement with the last exit at or above "
        "1 - epsilon (by a lower confidence bound), or at the mode's validation agreement where that is lower.",
    )
    live_calibration_every: int = Field(
        100, ge=1, description="Re-choose the live thresholds every this many shadowed images."
    )
    live_calibration_window: int = Field(
        1000, ge=10, description="Shadowed images the live thresholds are chosen from (a sliding window)."
    )
    shutdown_timeout_s: int = Field(
        30, ge=0, description="On SIGTERM/SIGINT, how long requests in flight may take to finish, in seconds."
    )
    api_keys: Annotated[list[str], NoDecode, BeforeValidator(comma_separated)] = Field(
        [],
        description="Comma-separated API keys for Authorization: Bearer <key> on every route but health and metrics; "
        "empty: no authentication.",
    )
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lower)] = Field(
        "info", description="Log level of the service and uvicorn."
    )
    access_log: bool = Field(
        False,
        description="One log line per HTTP request (uvicorn's access log); off: at hundreds of requests a second "
        "it costs the event loop time the metrics already account for. Errors are logged either way.",
    )


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--kebab-case` flag per setting; a flag left out leaves the env var or default in force."""
    options.add_arguments(
        parser, Settings, lambda name, field: f"[env {env_name(name)}, default {default_text(field)}]"
    )


def settings_from_args(namespace: argparse.Namespace) -> Settings:
    """Settings from the flags given on the command line, then the environment, then the defaults."""
    return options.from_args(Settings, namespace)
