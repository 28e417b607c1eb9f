"""Service configuration: one `BaseSettings`, read from `DYNADAPTER_*` environment variables."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of `dynadapter serve`; each field `x` is also read from `DYNADAPTER_X`."""

    model_config = SettingsConfigDict(env_prefix="DYNADAPTER_", protected_namespaces=())

    model_repo: Path = Path("model_repo")
    model_name: str | None = None  # None: the only (or alphabetically first) model in the repository
    model_version: str | None = None  # None: the highest numeric version
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=0, le=65535)
    intra_op_threads: int = Field(default=0, ge=0)  # 0: onnxruntime's default (one per core)
    providers: Literal["auto", "cuda", "cpu"] = "auto"  # auto: CUDA when a GPU really works, else CPU
    max_body_bytes: int = Field(default=10 * MiB, gt=0)
    max_pixels: int = Field(default=40_000_000, gt=0)  # larger images are refused (decompression bombs)
    max_batch_size: int = Field(default=16, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)  # how long the batcher waits to fill a batch
    max_queue: int = Field(default=256, ge=1)  # queued images beyond this get 503 + Retry-After
    request_timeout_s: float = Field(default=30.0, gt=0)  # 504 past this deadline
    shutdown_timeout_s: int = Field(default=30, ge=0)  # grace period for in-flight requests
    api_keys: Annotated[list[str], NoDecode] = []  # comma separated; empty: no authentication
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
