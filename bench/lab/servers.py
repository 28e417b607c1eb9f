"""The options every serving benchmark gives its servers, and the command line that starts this service."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from dynadapter.options import comma_separated

#: Where `make serve` builds the demo's model repository (relative to the working directory, the checkout).
DEMO_MODEL_REPO = Path("var") / "model_repo"
CommaList = BeforeValidator(comma_separated)


def subset(choices: Callable[[], Sequence[str]]) -> Callable[[list[str]], list[str]]:
    """A validator: a non-empty list of items of ``choices()``; ValueError names the choices otherwise."""

    def check(items: list[str]) -> list[str]:
        unknown = [item for item in items if item not in choices()]
        if unknown or not items:
            raise ValueError(f"expected a comma-separated subset of {list(choices())}")
        return items

    return check


class ServerOptions(BaseModel):
    """How every server of a benchmark batches and runs its model (the flags shared by the serving benchmarks)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, description="every server's batch limit")
    max_wait_ms: float = Field(5.0, ge=0, description="every server's wait for a batch to fill, in ms")
    threads: int = Field(
        0,
        ge=0,
        description="intra-op threads of every server's runtime; 0: each runtime's default, one per core "
        "(bench/serving/serve.py's docstring)",
    )
    providers: Literal["cpu", "auto", "cuda"] = Field("cpu", description="where the models run, for every server")
    spinning: bool = Field(False, description="this service's onnxruntime idle threads spin (off: its default)")


def service_argv(config: ServerOptions, providers: str) -> list[str]:
    """`dynadapter serve` on loopback with the bench's runtime and batching settings (without --port,
    the model repository and the model)."""
    return [
        *(sys.executable, "-m", "dynadapter", "serve", "--host", "127.0.0.1", "--log-level", "warning"),
        *("--providers", providers, "--intra-op-threads", str(config.threads)),
        "--allow-spinning" if config.spinning else "--no-allow-spinning",
        *("--max-batch-size", str(config.max_batch_size), "--max-wait-ms", str(config.max_wait_ms)),
        *("--grpc-port", "0"),  # no gRPC listener: servers started side by side would all want 8001
    ]
