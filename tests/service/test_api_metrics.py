import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import IMAGE, samples, value
from tests.support.tiny_onnx_model import NUM_EXITS, png_bytes

CONTRACT = {
    "dynadapter_requests": ("counter", {"model", "version", "code"}),
    "dynadapter_request_duration_seconds": ("histogram", {"model", "version"}),
    "dynadapter_exits": ("counter", {"model", "version", "exit"}),
    "dynadapter_flops_used": ("counter", {"model", "version"}),
    "dynadapter_flops_saved": ("counter", {"model", "version"}),
    "dynadapter_stage_duration_seconds": ("histogram", {"model", "version", "stage"}),
    "dynadapter_batch_size": ("histogram", {"model", "version"}),
    "dynadapter_segment_batch_images": ("histogram", {"model", "version", "segment"}),
    "dynadapter_inflight_requests": ("gauge", {"model", "version"}),
    "dynadapter_model_memory_bytes": ("gauge", {"model", "version"}),
    "dynadapter_serving_info": ("gauge", {"model", "version", "backend", "precision", "device"}),
}


def test_exposition_has_the_contract_names_types_and_labels(client: TestClient) -> None:
    client.post("/classify", content=png_bytes(0), headers=IMAGE)
    families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
    for name, (kind, labels) in CONTRACT.items():
        assert families[name].type == kind, name
        assert families[name].documentation
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, sample


def test_counters_move_by_exactly_the_number_of_images(client: TestClient) -> None:
    manifest = client.app.state.service.registry.get().manifest  # type: ignore[attr-defined]
    before = samples(client)
    exits = []
    for seed in range(12):
        body = client.post("/classify", content=png_bytes(seed), headers=IMAGE).json()
        exits.append(body["exit"]["index"])
    client.post("/classify?threshold=7", content=png_bytes(0), headers=IMAGE)  # a 422: counted, no image
    after = samples(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dynadapter_requests_total", model="tiny", version="1", code="200") == 12
    assert delta("dynadapter_requests_total", model="tiny", version="1", code="422") == 1
    assert delta("dynadapter_request_duration_seconds_count", model="tiny", version="1") == 13
    for k in range(NUM_EXITS):
        assert delta("dynadapter_exits_total", model="tiny", version="1", exit=str(k)) == exits.count(k)
    used = sum(manifest.segments[k].cumulative_gflops for k in exits) * 1e9
    full = manifest.gflops_full * 1e9 * len(exits)
    assert delta("dynadapter_flops_used_total", model="tiny", version="1") == pytest.approx(used)
    assert delta("dynadapter_flops_saved_total", model="tiny", version="1") == pytest.approx(full - used)
    assert delta("dynadapter_batch_size_sum", model="tiny", version="1") == 12
    assert (
        delta("dynadapter_stage_duration_seconds_count", model="tiny", version="1", stage="0") == 12
    )  # one batch each
    assert value(after, "dynadapter_inflight_requests", model="tiny", version="1") == 0


def test_concurrent_requests_are_batched(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_batch_size=8, max_wait_ms=50)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda s: client.post("/classify", content=png_bytes(s), headers=IMAGE), range(8)))
    assert {response.status_code for response in statuses} == {200}
    after = samples(client)
    batches = value(after, "dynadapter_batch_size_count", model="tiny", version="1")
    assert value(after, "dynadapter_batch_size_sum", model="tiny", version="1") == 8
    assert batches < 8  # at least two requests shared a batch


def test_each_app_has_its_own_registry(start_client: Callable[..., TestClient]) -> None:
    first, second = start_client(), start_client()
    first.post("/classify", content=png_bytes(0), headers=IMAGE)
    assert value(samples(first), "dynadapter_requests_total", model="tiny", version="1", code="200") == 1
    assert value(samples(second), "dynadapter_requests_total", model="tiny", version="1", code="200") == 0


def test_counters_are_exact_under_concurrency(start_client: Callable[..., TestClient]) -> None:
    client = start_client(max_batch_size=8, max_wait_ms=20)
    manifest = client.app.state.service.registry.get().manifest  # type: ignore[attr-defined]
    queries = ["", "?threshold=0", "?threshold=1", "?mode=fast", "?budget=0.8"]
    n = 40
    before = samples(client)

    def post(i: int) -> dict:
        url, data = f"/classify{queries[i % len(queries)]}", png_bytes(i)
        if i % 2:  # half as multipart, whose upload is closed after the response went out
            response = client.post(url, files={"file": ("x.png", data, "image/png")})
        else:
            response = client.post(url, content=data, headers=IMAGE)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(post, range(n)))
    exits = [body["exit"]["index"] for body in bodies]
    after = samples(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dynadapter_requests_total", model="tiny", version="1", code="200") == n
    assert delta("dynadapter_request_duration_seconds_count", model="tiny", version="1") == n
    assert [delta("dynadapter_exits_total", model="tiny", version="1", exit=str(k)) for k in range(NUM_EXITS)] == [
        exits.count(k) for k in range(NUM_EXITS)
    ]
    # Threshold-1 requests skip the early heads unless they share a batch with one that can leave:
    # each answer says what it cost, and the counters add exactly those.
    head = manifest.segments[0].head_gflops  # every head of the tiny model costs the same
    for body in bodies:
        skipped = (manifest.segments[body["exit"]["index"]].cumulative_gflops - body["gflops"]["used"]) / head
        assert skipped == pytest.approx(round(skipped), abs=1e-6) and 0 <= round(skipped) <= body["exit"]["index"]
    used = sum(body["gflops"]["used"] for body in bodies) * 1e9
    assert delta("dynadapter_flops_used_total", model="tiny", version="1") == pytest.approx(used, rel=1e-9)
    total = delta("dynadapter_flops_used_total", model="tiny", version="1") + delta(
        "dynadapter_flops_saved_total", model="tiny", version="1"
    )
    assert total == pytest.approx(n * manifest.gflops_full * 1e9, rel=1e-9)  # each image counted exactly once
    assert delta("dynadapter_batch_size_sum", model="tiny", version="1") == n
    assert delta("dynadapter_batch_size_count", model="tiny", version="1") < n  # they did share batches
    assert value(after, "dynadapter_inflight_requests", model="tiny", version="1") == 0


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not on PATH (Debian: apt-get install prometheus)"
)
def test_promtool_accepts_the_exposition(client: TestClient) -> None:
    for query in ("", "?threshold=0", "?threshold=1", "?threshold=7"):  # every exit, and an error code
        client.post(f"/classify{query}", content=png_bytes(0), headers=IMAGE)
    exposition = client.get("/metrics").text
    assert 'code="422"' in exposition
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip()  # not even a lint warning
