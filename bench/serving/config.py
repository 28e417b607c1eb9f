"""The flags of `dynadapter bench serve` (``ServeBenchConfig``) and what they name: the variants of the plain
run (``VARIANTS``) and the precision/backend servers of ``--precisions`` (``PRECISION_SERVERS``).

``--photos`` and ``--precisions`` hand the run to the experiments ``serving.photos`` and
``serving.precisions`` (``bench/commands.py`` dispatches), which read these flags too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from dynadapter.bench.lab.servers import CommaList, ServerOptions, subset


@dataclass(frozen=True)
class Variant:
    """A measured configuration: the server that answers it and the query string it adds to each request."""

    server: str  # key of the server process that answers it
    query: str
    description: str
    # How the image travels: "multipart" upload, "oip" JSON (a base64 BYTES tensor), or "grpc": OIP ModelInfer
    # (the raw bytes in raw_input_contents; timed by Python clients, bench/serving/grpc_rounds.py)
    protocol: str = "multipart"


VARIANTS = {
    "fast": Variant("cascade", "?mode=fast", "this service, per-stage segments, mode fast"),
    "balanced": Variant("cascade", "?mode=balanced", "this service, per-stage segments, mode balanced"),
    "accurate": Variant("cascade", "?mode=accurate", "this service, per-stage segments, mode accurate"),
    "equal-accuracy": Variant(
        "cascade",
        "?threshold={threshold}",
        "this service, per-stage segments, the cheapest calibrated threshold within 0.5 points of the static "
        "graph's accuracy on the images sent",
    ),
    "threshold-1": Variant("cascade", "?threshold=1", "this service, per-stage segments, threshold 1 (no early exit)"),
    "static": Variant("static", "", "this service, one static ONNX graph (full depth, last exit)"),
    "litserve-onnx": Variant("litserve-onnx", "", "LitServe + onnxruntime, the static graph"),
    "litserve-torch": Variant("litserve-torch", "", "LitServe + PyTorch eager, the static model"),
    # An OIP or gRPC variant's "?mode=..." travels as the request's parameters (serve.variant_parameters).
    "balanced-oip": Variant(
        "cascade",
        "?mode=balanced",
        "this service, per-stage segments, mode balanced, over OIP JSON (as Triton is sent)",
        "oip",
    ),
    "balanced-grpc": Variant(
        "cascade",
        "?mode=balanced",
        "this service, per-stage segments, mode balanced, over OIP gRPC ModelInfer (the PNG as BYTES in "
        "raw_input_contents); timed by Python clients (grpc.aio, one channel), not wrk, so its latencies include "
        "the client's own time and are not directly comparable with the wrk rows",
        "grpc",
    ),
    "triton-onnx": Variant(
        "triton-onnx",
        "",
        "NVIDIA Triton (nvidia-pytriton's tritonserver), the static graph on fp32 onnxruntime, dynamic batching, "
        "OIP JSON (bench/serving/triton.py)",
        "oip",
    ),
    "triton-int8": Variant(
        "triton-int8",
        "",
        "NVIDIA Triton, the static graph as int8 OpenVINO IR (NNCF), dynamic batching, OIP JSON",
        "oip",
    ),
}
#: The variants that need the Triton peer (``--triton-python``); left out of the default run without one.
TRITON_VARIANTS = ("triton-onnx", "triton-int8")
#: The suffix of a variant's second row: its servers with ``--tuned-threads``.
TUNED = "+tuned"


#: `--precisions` server name -> (backend, precision, allow_spinning)
PRECISION_SERVERS = {
    "fp32-onnxruntime": ("onnxruntime", "fp32", True),
    "fp32-onnxruntime-nospin": ("onnxruntime", "fp32", False),
    "fp32-openvino": ("openvino", "fp32", True),
    "int8-openvino": ("openvino", "int8", True),
}


class ServeBenchConfig(ServerOptions):
    """What `dynadapter bench serve` measures and how; its flags are generated from these fields."""

    run_dir: Path | None = Field(
        None, description="the trained run (default: the demo's, demo/dinov2-mnist); the baselines are built from it"
    )
    model_repo: Path | None = Field(
        None,
        description="a model repository holding the export of --run-dir (default: for the demo run, the one "
        "`dynadapter demo build` writes to var/model_repo; else --run-dir is exported afresh)",
    )
    model_name: str | None = Field(None, description="model in --model-repo (default: the only or first one)")
    concurrency: Annotated[list[Annotated[int, Field(ge=1)]], CommaList] = Field(
        [1, 8, 32], min_length=1, description="clients sending back to back, comma-separated"
    )
    duration: float = Field(5.0, gt=0, description="seconds per measurement, at most")
    requests: int = Field(2000, ge=1, description="requests per measurement, at most")
    images: int | None = Field(
        None, ge=1, description="test images sent, cycled; each variant classifies each once (default: all)"
    )
    rounds: int = Field(3, ge=1, description="measurements of each variant and concurrency")
    variants: Annotated[list[str], CommaList, AfterValidator(subset(lambda: list(VARIANTS)))] = Field(
        list(VARIANTS), description="comma-separated subset of the variants"
    )
    docs: Path = Field(Path("docs"), description="where results.{json,md} go")
    tuned_threads: int = Field(
        1,
        ge=0,
        description="a second row of every variant: its server with this many intra-op threads and "
        "onnxruntime's spinning off (the best setting on a small machine); 0: no second row",
    )
    triton_python: Path | None = Field(
        None,
        description="a Python with nvidia-pytriton (numpy < 2, so its own environment: `make triton-venv` writes "
        "var/triton-venv) for the Triton variants; default: var/triton-venv/bin/python where it exists",
    )
    photos: bool = Field(
        False,
        description="camera-sized photos instead of the test split: decoders, servers, peak RSS, accuracy "
        "(bench/serving/photos.py)",
    )
    baseline_site: Path | None = Field(
        None,
        description="with --photos: a folder another build of this service was installed into "
        "(pip install --target), measured beside this one",
    )
    precisions: Annotated[
        list[str] | None, CommaList, AfterValidator(lambda v: v and subset(lambda: list(PRECISION_SERVERS))(v))
    ] = Field(
        None,
        description="instead of the variants: the service at each of these precision/backend servers "
        "(comma-separated), every mode (bench/serving/precisions.py)",
    )
