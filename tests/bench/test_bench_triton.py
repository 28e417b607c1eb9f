"""The Triton peer of `bench serve` (bench/serving/triton.py): a real tritonserver (nvidia-pytriton) serving a model
with its dynamic batcher, answering OIP JSON with the model's own probabilities, and loaded by wrk without errors.

nvidia-pytriton pins numpy < 2, so it lives in an environment of its own (`make triton-venv`); without one these
tests are skipped. Start-up takes a few seconds.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynadapter.bench.lab.process import ServerProcess
from dynadapter.bench.lab.wrk import run_wrk
from dynadapter.bench.serving.inputs import TRITON_VENV_PYTHON
from dynadapter.bench.serving.triton import INFER_PATH, READY_PATH, command, oip_body
from dynadapter.contract import load_model, softmax
from tests.support.tiny_onnx_model import OPENVINO, TinyWeights, png_bytes, write_model_version

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / TRITON_VENV_PYTHON
pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason="no Triton environment (make triton-venv)")


def expected_probabilities(repo: Path, weights: TinyWeights, png: bytes) -> np.ndarray:
    """The tiny model's last exit on the service's own preprocessing of ``png``."""
    pixels = load_model(repo).manifest.preprocessing.load(png, 10_000)[None]
    return softmax(weights.forward_all(pixels)[-1])[0]


@pytest.mark.load
@pytest.mark.parametrize("kind", ["onnx", *(["openvino"] if OPENVINO else [])])
def test_triton_answers_oip_json_with_the_models_probabilities(tmp_path: Path, kind: str) -> None:
    weights = TinyWeights.random(0)
    write_model_version(tmp_path / "repo", weights)
    repo = tmp_path / "repo"
    server = ServerProcess("triton", command(PYTHON, kind, repo, 1, 4, 5.0), READY_PATH, INFER_PATH, cwd=ROOT)
    try:
        server.wait_ready(120)
        import httpx

        png = png_bytes(3)
        answer = httpx.post(server.classify_url, content=oip_body(png, batched=True), timeout=30)
        assert answer.status_code == 200, answer.text
        [output] = answer.json()["outputs"]
        assert (output["name"], output["shape"]) == ("probabilities", [1, 5])
        np.testing.assert_allclose(output["data"], expected_probabilities(repo, weights, png), rtol=1e-4, atol=1e-6)
        # Triton's batched model takes BYTES [N, 1]: a [1] tensor is refused, with Triton's own message.
        refused = httpx.post(server.classify_url, content=oip_body(png, batched=False), timeout=30)
        assert refused.status_code == 400 and "image" in json.loads(refused.text)["error"]
        if shutil.which("wrk"):
            bodies = [oip_body(png_bytes(seed), batched=True) for seed in range(4)]
            one = run_wrk(server.classify_url, bodies, "application/json", 4, 1)
            assert one.responses > 0 and one.errors == 0
    finally:
        server.stop()
