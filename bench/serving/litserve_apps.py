"""What a user would deploy without this project: the full-depth model behind LitServe.

Two LitAPIs, both with LitServe's own dynamic batching and the static graph of
``dynadapter.bench.serving.static_graph`` (full depth, last exit only): ``onnx`` runs its one-segment model
repository with onnxruntime, ``torch`` rebuilds its run directory with ``load_run`` and runs it in
PyTorch eager mode. Both decode and preprocess with the service's own path (``Preprocessing.load``) unless given
``--plain-decode`` (full-resolution Pillow, what a user writes by hand: ``bench serve --photos``), so every server
of the bench sees the same pixels and does the same per-image work around the model.

    python -m dynadapter.bench.serving.litserve_apps {onnx,torch} PATH --port P [--threads N] [--max-batch-size B]
        [--batch-timeout-s T]

answers ``POST /predict`` (multipart field ``file``) with ``{"label", "class_id", "confidence"}``.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from PIL import Image

from dynadapter.contract import Preprocessing, load_model, softmax
from dynadapter.service.settings import Settings

MAX_PIXELS = Settings.model_fields["max_pixels"].default  # the service's own decompression-bomb limit


class _ImageClassifier(ls.LitAPI):
    """Multipart image in, top-1 out; subclasses load the model and map a float32 batch to logits."""

    labels: list[str]
    preprocessing: Preprocessing

    def __init__(
        self, path: Path, threads: int, max_batch_size: int, batch_timeout_s: float, plain_decode: bool = False
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
        self.path = path
        self.plain_decode = plain_decode
        self.threads = threads  # intra-op threads of the runtime; 0: its own default (one per core)

    # Unannotated on purpose: LitServe reads this parameter's annotation as the endpoint's request type,
    # and without one it parses the multipart form itself.
    def decode_request(self, request) -> np.ndarray:
        data = request["file"].file.read()
        if self.plain_decode:  # what a user writes by hand: full-resolution Pillow (bench serve --photos)
            return self.preprocessing(Image.open(io.BytesIO(data)).convert("RGB"))
        return self.preprocessing.load(data, MAX_PIXELS)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, logits: np.ndarray) -> dict[str, Any]:
        probabilities = softmax(logits)
        class_id = int(probabilities.argmax())
        return {"label": self.labels[class_id], "class_id": class_id, "confidence": float(probabilities[class_id])}


class OnnxClassifier(_ImageClassifier):
    """The static graph's model repository (one segment) on onnxruntime: default options but the thread count."""

    def setup(self, device: str) -> None:
        import onnxruntime as ort

        model = load_model(self.path)
        self.labels, self.preprocessing = model.manifest.labels, model.manifest.preprocessing
        provider = "CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider"
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(model.segment_paths[0]), options, providers=[provider])

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": images})[0]


class TorchClassifier(_ImageClassifier):
    """The static run directory, rebuilt with ``load_run`` and run in PyTorch eager mode."""

    def setup(self, device: str) -> None:
        import torch

        from dynadapter.training.run_dir import load_run

        if self.threads:
            torch.set_num_threads(self.threads)
        run = load_run(self.path)
        self.labels, self.preprocessing = run.labels, run.preprocessing
        self.device = device
        self.model = run.model.to(device)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(images).to(self.device))[-1].float().cpu().numpy()


BACKENDS: dict[str, type[_ImageClassifier]] = {"onnx": OnnxClassifier, "torch": TorchClassifier}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=sorted(BACKENDS))
    parser.add_argument("path", type=Path, help="onnx: the static graph's model repository; torch: its run directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: the runtime's default")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout-s", type=float, default=0.005)
    parser.add_argument("--plain-decode", action="store_true", help="decode with plain full-resolution Pillow")
    args = parser.parse_args(argv)
    backend = BACKENDS[args.backend]
    api = backend(args.path, args.threads, args.max_batch_size, args.batch_timeout_s, args.plain_decode)
    server = ls.LitServer(api, accelerator=args.accelerator, workers_per_device=1, timeout=30)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
