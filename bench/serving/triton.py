"""The Triton peer of ``bench serve``: NVIDIA Triton Inference Server serving the static graph with its dynamic batcher.

The ``nvidia-pytriton`` package bundles a real ``tritonserver`` (HTTP front end, scheduler, dynamic batcher) that
runs on CPU; its only bundled backend is the Python backend, whose stub hands each batch to a callable bound in
this process (``Triton.bind``). The callable decodes the PNGs with the service's own path (``Preprocessing.load``,
as this service and LitServe do: every server of the bench does the same per-image work around the model) and
runs the static graph (``bench/serving/static_graph.py``: full depth, last exit):

- ``onnx``: the one-segment ONNX model on fp32 onnxruntime;
- ``int8``: its NNCF int8 OpenVINO IR (``precisions`` "int8-openvino"), the strongest static peer on a CPU with
  int8 dot products (``openvino``: its fp32 IR, for models without int8).

Both run through the service's own backends (``service/backends``), so the kernels are the ones this service runs.

The model ``static`` takes ``image``: BYTES ``[N, 1]`` (Triton cannot batch a ``BYTES [N]`` input; each request
sends shape ``[1, 1]``), one base64-encoded PNG per row, as OIP JSON (``POST /v2/models/static/infer``, the same
body this service's OIP route takes), and answers ``probabilities`` FP32 ``[N, C]``. Dynamic batching:
at most ``--max-batch-size`` images, at most ``--max-wait-ms`` of queue delay.

``nvidia-pytriton`` pins numpy < 2, so it runs from its own environment (``make triton-venv``:
var/triton-venv, holding only it and numpy 1.x in front of the project's packages). Its Python-backend stub
links the OS ``libpython3.11``; under another build of 3.11 (pyenv, conda) models fail to load with
``AttributeError: '_thread.RLock' object has no attribute '_recursion_count'`` unless the interpreter's own
LIBDIR comes first in ``LD_LIBRARY_PATH``: ``triton_environment`` puts it there.

    python -m dynadapter.bench.serving.triton {onnx,int8,openvino} STATIC_REPO --port P [--threads N]
        [--max-batch-size B] [--max-wait-ms MS]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynadapter.contract.model_repository import FP32_ONNX

#: Triton's model name for the static graph, and its HTTP route.
MODEL = "static"
INFER_PATH = f"/v2/models/{MODEL}/infer"
READY_PATH = f"/v2/models/{MODEL}/ready"
#: The environment variable that names Triton's HTTP port (``ServerProcess``'s ``port_env``).
PORT_ENV = "DYNADAPTER_TRITON_PORT"


def triton_environment() -> dict[str, str]:
    """``LD_LIBRARY_PATH`` with the running interpreter's LIBDIR first: the Python-backend stub then loads this
    build's libpython3.11 rather than the OS one."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = os.environ.get("LD_LIBRARY_PATH", "")
    return {"LD_LIBRARY_PATH": ":".join(filter(None, [libdir, rest]))}


def oip_body(png: bytes, batched: bool, parameters: dict[str, Any] | None = None) -> bytes:
    """One image as an OIP JSON request: a BYTES tensor of its base64 text, shape [1, 1] for Triton's batched
    model (``batched``), else [1] (this service's OIP route), with the request's ``parameters`` (e.g. a mode)."""
    import json

    shape = [1, 1] if batched else [1]
    tensor = {"name": "image", "datatype": "BYTES", "shape": shape, "data": [base64.b64encode(png).decode()]}
    return json.dumps({"inputs": [tensor], **({"parameters": parameters} if parameters else {})}).encode()


def cascade_runner(static_repo: Path, precision: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """The model at ``precision`` ("fp32-onnx" on onnxruntime, "<precision>-openvino" on OpenVINO) through the
    service's own backends, every segment in turn (the static graph has one): float32 [N, 3, H, W] -> logits
    [N, C]. ``threads``: the runtime's intra-op threads, 0: its default."""
    from dynadapter.contract import load_model
    from dynadapter.service.backends.onnxruntime import OnnxRuntimeBackend
    from dynadapter.service.backends.openvino import OpenVinoBackend

    model = load_model(static_repo, precision=precision)
    classes = model.manifest.num_classes
    backend: Any = (
        OnnxRuntimeBackend(model.segment_paths, intra_op_threads=threads, num_classes=classes)
        if precision == FP32_ONNX
        else OpenVinoBackend(model.segment_paths, threads, classes)
    )
    last = backend.num_segments - 1

    def run(images: np.ndarray) -> np.ndarray:
        hidden: Any = images
        for k in range(backend.num_segments):
            hidden, logits = backend.run(k, hidden, k == last)
        return logits

    return run


#: ``kind`` on the command line -> the precision served: fp32 onnxruntime, and int8 OpenVINO (fp32 OpenVINO too)
KINDS = {"onnx": FP32_ONNX, "int8": "int8-openvino", "openvino": "fp32-openvino"}


def infer_function(static_repo: Path, runner: Callable[[np.ndarray], np.ndarray]) -> Callable[..., dict[str, Any]]:
    """Triton's batched callable: ``image`` BYTES [N, 1] of base64 PNG text -> ``probabilities`` FP32 [N, C]."""
    from dynadapter.contract import load_model, softmax
    from dynadapter.service.settings import Settings

    preprocessing = load_model(static_repo).manifest.preprocessing
    max_pixels = Settings.model_fields["max_pixels"].default  # the service's own decompression-bomb limit

    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        pixels = np.stack([preprocessing.load(base64.b64decode(row[0]), max_pixels) for row in image])
        return {"probabilities": softmax(runner(pixels)).astype(np.float32)}

    return infer


def serve(kind: str, static_repo: Path, port: int, threads: int, max_batch_size: int, max_wait_ms: float) -> None:
    """Bind the static graph into a tritonserver on loopback ``port`` and serve until terminated."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from dynadapter.contract import load_model

    classes = load_model(static_repo).manifest.num_classes
    os.environ.update(triton_environment())  # tritonserver and its Python-backend stub inherit it
    config = TritonConfig(http_address="127.0.0.1", http_port=port, allow_grpc=False, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=batch(infer_function(static_repo, cascade_runner(static_repo, KINDS[kind], threads))),
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(classes,))],
            config=ModelConfig(
                max_batch_size=max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=round(max_wait_ms * 1000)),
            ),
            strict=False,
        )
        triton.serve()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("static_repo", type=Path, help="the static graph's model repository")
    parser.add_argument("--port", type=int, default=int(os.environ.get(PORT_ENV, "8000")))
    parser.add_argument("--threads", type=int, default=0, help="the runtime's threads; 0: its default")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    serve(args.kind, args.static_repo, args.port, args.threads, args.max_batch_size, args.max_wait_ms)


def command(
    python: Path, kind: str, static_repo: Path, threads: int, max_batch_size: int, max_wait_ms: float
) -> list[str]:
    """The argv that starts the ``kind`` peer under ``python`` (an interpreter with nvidia-pytriton)."""
    return [
        *(str(python), "-m", "dynadapter.bench.serving.triton", kind, str(static_repo), "--threads", str(threads)),
        *("--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms)),
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
