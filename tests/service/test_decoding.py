"""The decode pool: the service's pixels are `Preprocessing.load`'s on every kind of photo, decodes
are bounded (503 with Retry-After beyond the queue), and memory stays within the documented budget
under concurrent 40 MP uploads (docs/images.md)."""

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from dynadapter.bench.lab.photo_corpus import corpus, encode
from dynadapter.contract import Preprocessing, softmax
from dynadapter.contract.images import DECODE_BYTES_PER_PIXEL
from dynadapter.contract.model_repository import load_model
from dynadapter.service.batching import QueueFullError
from dynadapter.service.decoding import MAX_DEFAULT_WORKERS, DecodePool, default_workers, peak_bytes
from dynadapter.service.settings import Settings
from tests.support.service import ROOT, serving
from tests.support.tiny_onnx_model import TinyWeights, reference_exits

CASES = corpus()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_service_answers_from_the_pixels_of_preprocessing_load(
    case, client: TestClient, weights: TinyWeights, model_repo: Path
) -> None:
    """Over every case of the generated corpus: the answer is the model's on `Preprocessing.load`'s tensor."""
    spec = load_model(model_repo).manifest.preprocessing
    response = client.post("/classify?top_k=3", content=case.data, headers={"content-type": "image/*"})
    assert response.status_code == 200, response.text
    exit_index, logits = reference_exits(weights, spec.load(case.data, 40_000_000)[None], np.array([[0.6, 0.6]]))[0]
    body = response.json()
    assert body["exit"]["index"] == exit_index
    expected = softmax(logits)
    for score in body["top_k"]:
        assert score["confidence"] == pytest.approx(float(expected[score["class_id"]]), abs=1e-5)


def test_requests_beyond_the_decode_queue_get_503_with_retry_after(
    start_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Semaphore(0), threading.Event()
    load = Preprocessing.load

    def held_load(self: Preprocessing, data: bytes, max_pixels: int, **kwargs: bool) -> np.ndarray:
        started.release()
        assert release.wait(30), "the test never released the decode"
        return load(self, data, max_pixels, **kwargs)

    monkeypatch.setattr(Preprocessing, "load", held_load)
    client = start_client(decode_workers=1, decode_queue=1)
    data = CASES[0].data

    def post() -> httpx.Response:
        return client.post("/classify", content=data, headers={"content-type": "image/jpeg"})

    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(post)
        assert started.acquire(timeout=10)  # one decoding, holding the only thread
        others = [pool.submit(post) for _ in range(6)]  # one of them gets the one queue place, five 503
        refused = []
        for future in as_completed(others, timeout=30):
            refused.append(future.result())
            if len(refused) == 5:
                break
        release.set()
        assert first.result().status_code == 200
    statuses = sorted(future.result().status_code for future in others)
    assert statuses == [200, 503, 503, 503, 503, 503]
    for response in refused:
        assert response.json()["error"]["code"] == "overloaded" and int(response.headers["retry-after"]) >= 1
    assert post().status_code == 200, "places are given back"


def test_pool_admits_workers_plus_queue() -> None:
    async def scenario(pool: DecodePool) -> None:
        async with pool.admit(), pool.admit(), pool.admit():
            with pytest.raises(QueueFullError):
                async with pool.admit():
                    pass
        async with pool.admit():  # freed again
            assert await pool.run(sum, [1, 2, 3]) == 6

    pool = DecodePool(workers=2, queue=1)
    try:
        asyncio.run(scenario(pool))
    finally:
        pool.shutdown()


def test_budget_formula_and_default_size() -> None:
    assert peak_bytes(workers=2, queue=32, max_pixels=40_000_000, max_body_bytes=10 * 2**20) == (
        2 * 40_000_000 * DECODE_BYTES_PER_PIXEL + 36 * 10 * 2**20
    )
    assert 1 <= default_workers() <= MAX_DEFAULT_WORKERS
    assert DecodePool(workers=0, queue=0).workers == default_workers()


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS accounting")
def test_concurrent_40_megapixel_uploads_stay_within_the_memory_budget(model_repo: Path) -> None:
    workers, queue, max_pixels, max_body = 2, 2, 40_000_000, 10 * 2**20
    side = 6324  # 39.99 MP: under the limit
    rgba = Image.new("RGBA", (side, side), (40, 90, 160, 200))
    uploads = [encode(rgba, "PNG", compress_level=1), encode(rgba.convert("P"), "PNG", transparency=0)]
    del rgba
    budget = peak_bytes(workers, queue, max_pixels, max_body)
    settings = {"DECODE_WORKERS": str(workers), "DECODE_QUEUE": str(queue), "MAX_PIXELS": str(max_pixels)}
    with serving(model_repo, **settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        pid = server.process.pid
        assert http.post("/classify", content=uploads[0], headers={"content-type": "image/png"}).status_code == 200
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
        baseline = _rss_kib(pid, "VmRSS") * 1024

        def post(index: int) -> httpx.Response:
            return http.post("/classify", content=uploads[index % 2], headers={"content-type": "image/png"})

        with ThreadPoolExecutor(12) as pool:
            statuses = [response.status_code for response in pool.map(post, range(12))]
        peak = _rss_kib(pid, "VmHWM") * 1024
    assert statuses.count(200) >= workers + queue and set(statuses) <= {200, 503}, statuses
    print(f"statuses {statuses}; peak {peak - baseline} B above baseline {baseline} B; budget {budget} B")
    assert peak - baseline <= budget, f"peak {peak - baseline} bytes above baseline, budget {budget}"


# The demo model's server once loaded and warmed (VmRSS), measured by `dynadapter bench serve
# --photos` (docs/results.md) and rounded up: what the decode budget comes on top of.
DEMO_READY_RSS_BYTES = 900 * 2**20
GiB = 2**30


def _shipped_budget(env: dict[str, str]) -> int:
    own = {name: value for name, value in env.items() if name.startswith("DYNADAPTER_")}  # not OTEL_*
    settings = Settings(**{name[len("DYNADAPTER_") :].lower(): value for name, value in own.items()})
    workers = settings.decode_workers or default_workers()
    return DEMO_READY_RSS_BYTES + peak_bytes(
        workers, settings.decode_queue, settings.max_pixels, settings.max_body_bytes
    )


def test_shipped_kubernetes_and_compose_limits_hold_the_decode_budget() -> None:
    deployment = yaml.safe_load((ROOT / "docker" / "k8s" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"] if item["name"] != "DYNADAPTER_MODEL_REPO"}
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and _shipped_budget(env) <= int(limit[:-2]) * GiB
    assert env["DYNADAPTER_DECODE_WORKERS"] == container["resources"]["limits"]["cpu"]
    service = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["dynadapter"]
    assert service["mem_limit"].endswith("g")
    assert _shipped_budget(service["environment"]) <= int(service["mem_limit"][:-1]) * GiB
