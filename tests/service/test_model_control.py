"""Many models and versions, and model control without downtime: Triton's repository extension, the
version policy, the repository poll, requests in flight finishing on their version, corrupt versions refused."""

import base64
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.service import IMAGE, samples, serving, value
from tests.support.stand_ins import gate_runner
from tests.support.tiny_onnx_model import TinyWeights, png_bytes, write_model_version

PNG = png_bytes(0)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Path:
    """tiny v1 and v2, other v1: written once (each version is an export), copied for every test."""
    folder = tmp_path_factory.mktemp("template")
    write_model_version(folder, weights, "tiny", "1")
    write_model_version(folder, weights, "tiny", "2")
    write_model_version(folder, TinyWeights.random(seed=1), "other", "1")
    return folder


@pytest.fixture
def repo(tmp_path: Path, template: Path) -> Path:
    """A repository of its own (the tests add versions), a copy of the template."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path


def corrupt(folder: Path) -> None:
    """Change the tail of segment 1 in every precision the version has (whichever backend serves)."""
    for segment in sorted(folder.glob("segment_1.*")):
        segment.write_bytes(segment.read_bytes()[:-10] + b"0123456789")


def test_every_model_loads_with_its_policy_and_every_route_names_one(
    start_client: Callable[..., TestClient], repo: Path
) -> None:
    client = start_client(model_repo=repo, version_policy="all")
    listed = [(m["name"], m["version"]) for m in client.get("/v1/models").json()["models"]]
    assert listed == [("other", "1"), ("tiny", "2"), ("tiny", "1")]
    assert all(m["memory_bytes"] >= 0 for m in client.get("/v1/models").json()["models"])
    assert client.post("/classify", content=PNG, headers=IMAGE).json()["model"] == "other"  # first by name
    answer = client.post("/classify?model=tiny", content=PNG, headers=IMAGE).json()
    assert (answer["model"], answer["version"]) == ("tiny", "2")  # the highest served version
    assert client.post("/classify?model=tiny&version=1", content=PNG, headers=IMAGE).json()["version"] == "1"
    assert client.post("/classify?model=tiny&version=3", content=PNG, headers=IMAGE).status_code == 404
    assert client.post("/classify?model=nope", content=PNG, headers=IMAGE).json()["error"]["code"] == "model_not_found"
    assert client.get("/v2/models/tiny").json()["versions"] == ["2", "1"]
    assert client.get("/v2/models/tiny/versions/1/ready").json()["ready"] is True
    metrics = samples(client)
    assert value(metrics, "dynadapter_requests_total", model="tiny", version="1", code="200") == 1
    assert value(metrics, "dynadapter_requests_total", model="tiny", version="2", code="200") == 1
    assert value(metrics, "dynadapter_model_memory_bytes", model="other", version="1") >= 0


@pytest.mark.parametrize(
    ("policy", "models", "expected"),
    [
        ("latest:1", "", [("other", "1"), ("tiny", "2")]),
        ("specific:1", "tiny", [("tiny", "1")]),
        ("latest:2", "tiny", [("tiny", "2"), ("tiny", "1")]),
    ],
)
def test_version_policy_and_model_list(
    start_client: Callable[..., TestClient], repo: Path, policy: str, models: str, expected: list
) -> None:
    client = start_client(model_repo=repo, version_policy=policy, models=models)
    assert [(m["name"], m["version"]) for m in client.get("/v1/models").json()["models"]] == expected


def test_request_in_flight_finishes_on_its_version_and_new_ones_go_to_the_new_one(
    start_client: Callable[..., TestClient], repo: Path, weights: TinyWeights, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(repo / "tiny" / "2")
    client = start_client(model_repo=repo, models="tiny")
    gate = gate_runner(client, monkeypatch)  # version 1's cascade waits for the gate
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/classify", content=PNG, headers=IMAGE)
        assert gate.entered.wait(10)
        write_model_version(repo, weights, "tiny", "2")
        assert client.post("/v2/repository/models/tiny/load").status_code == 200
        assert client.post("/classify", content=PNG, headers=IMAGE).json()["version"] == "2"  # not held by the gate
        gate.open.set()
        assert held.result().json()["version"] == "1"
    deadline = time.monotonic() + 10
    while ("dynadapter_model_memory_bytes", frozenset({("model", "tiny"), ("version", "1")})) in samples(client):
        assert time.monotonic() < deadline, "version 1 was never retired"
        time.sleep(0.02)


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    start_client: Callable[..., TestClient], repo: Path, weights: TinyWeights
) -> None:
    client = start_client(model_repo=repo, models="tiny")
    corrupt(write_model_version(repo, weights, "tiny", "3"))
    response = client.post("/v2/repository/models/tiny/load")
    assert response.status_code == 400 and "sha256 mismatch" in response.json()["error"]
    assert client.post("/classify", content=PNG, headers=IMAGE).json()["version"] == "2"
    ready, refused = client.post("/v2/repository/index").json()
    assert ready == {"name": "tiny", "version": "2", "state": "READY"}
    # The segment file of the precision being served (ONNX on onnxruntime, IR on OpenVINO) is named.
    assert refused["state"] == "UNAVAILABLE"
    assert re.search(r"tiny/3/segment_1\.(onnx|fp32\.xml): sha256 mismatch", refused["reason"])


def test_unload_load_and_the_index(start_client: Callable[..., TestClient], repo: Path) -> None:
    client = start_client(model_repo=repo)
    assert client.post("/v2/repository/models/other/unload").status_code == 200
    assert client.post("/v2/models/other/infer", json={"inputs": []}).status_code == 404
    assert client.get("/v2/models/other/ready").status_code == 404
    assert {"name": "other", "state": "UNAVAILABLE"} in client.post("/v2/repository/index").json()
    assert client.post("/v2/repository/models/other/unload").status_code == 404
    assert client.post("/v2/repository/models/other/load").status_code == 200
    assert client.get("/v2/models/other/ready").json()["ready"] is True
    response = client.post("/v2/repository/models/missing/load")
    assert response.status_code == 400 and "no version" in response.json()["error"]


def test_repository_routes_need_the_api_key(start_client: Callable[..., TestClient], repo: Path) -> None:
    client = start_client(model_repo=repo, api_keys="k1")
    for path in ("/v2/repository/index", "/v2/repository/models/tiny/load", "/v2/repository/models/tiny/unload"):
        response = client.post(path)
        assert response.status_code == 401 and isinstance(response.json()["error"], str), path
    assert client.get("/v2/health/ready").status_code == 200  # probes stay open
    assert client.post("/v2/repository/index", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_the_repository_poll_brings_in_new_versions_and_drops_gone_ones(
    start_client: Callable[..., TestClient],
    repo: Path,
    weights: TinyWeights,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    client = start_client(model_repo=repo, models="tiny", repository_poll_s=0.05)
    write_model_version(repo, weights, "tiny", "5")
    wait_for(lambda: client.get("/v2/models/tiny").json()["versions"] == ["5"])
    shutil.rmtree(repo / "tiny" / "5")
    wait_for(lambda: client.get("/v2/models/tiny").json()["versions"] == ["2"])
    # Corrupted before it enters the repository, as a bad copy would: corrupted in place, the poll
    # could load the intact files first (a fresh-clone run did) and never see the bad sha256.
    staged = write_model_version(tmp_path_factory.mktemp("staging"), weights, "tiny", "6")  # outside the repo
    corrupt(staged)
    staged.rename(repo / "tiny" / "6")
    wait_for(lambda: "sha256" in str(client.post("/v2/repository/index").json()))
    assert client.get("/v2/models/tiny").json()["versions"] == ["2"]


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def test_versions_swap_under_concurrent_load_with_zero_errors(repo: Path, weights: TinyWeights) -> None:
    shutil.rmtree(repo / "tiny" / "2")
    with serving(repo, models="tiny", max_wait_ms="1") as server:
        stop = threading.Event()
        statuses: list[int] = []
        versions: list[str] = []

        def hammer() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    response = http.post("/classify", content=PNG, headers=IMAGE)
                    statuses.append(response.status_code)
                    versions.append(response.json().get("version", "?"))

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(hammer) for _ in range(4)]
            for version in ("2", "3", "4"):
                write_model_version(repo, weights, "tiny", version)
                response = httpx.post(f"{server.url}/v2/repository/models/tiny/load", timeout=60)
                assert response.status_code == 200, response.text
                time.sleep(0.2)
            stop.set()
            for worker in workers:
                worker.result()
        metrics = samples(httpx.Client(base_url=server.url))
    assert statuses and set(statuses) == {200}
    assert versions[-1] == "4" and {"1", "4"} <= set(versions)
    counted = sum(value(metrics, "dynadapter_requests_total", model="tiny", version=v, code="200") for v in "1234")
    assert counted == len(statuses)
    assert "Traceback" not in server.output


def replace_version(repo: Path, name: str, version: str, weights: TinyWeights, staging: Path) -> None:
    """What `dynadapter export --version V --overwrite` does: the version folder's files replaced."""
    fresh = write_model_version(staging, weights, name, version)
    shutil.rmtree(repo / name / version)
    shutil.move(fresh, repo / name / version)


def test_a_load_reopens_a_version_whose_files_were_replaced(
    start_client: Callable[..., TestClient], repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    client = start_client(model_repo=repo)
    other = client.post("/classify?model=other&top_k=2", content=PNG, headers=IMAGE).json()["top_k"]
    assert client.post("/classify?model=tiny&top_k=2", content=PNG, headers=IMAGE).json()["top_k"] != other
    replace_version(repo, "tiny", "2", TinyWeights.random(seed=1), tmp_path_factory.mktemp("staging"))
    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    answer = client.post("/classify?model=tiny&top_k=2", content=PNG, headers=IMAGE).json()
    assert (answer["version"], answer["top_k"]) == ("2", other)  # the new files: other's weights
    # The old engine retired after the swap; the series of tiny 2 are its successor's and stay.
    wait_for(lambda: not client.app.state.service.registry._retiring)  # type: ignore[attr-defined]
    assert ("dynadapter_model_memory_bytes", frozenset({("model", "tiny"), ("version", "2")})) in samples(client)
    # Unchanged files: the same engine keeps serving (a load of an unchanged model opens nothing).
    engine = client.app.state.service.registry.get("tiny")  # type: ignore[attr-defined]
    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    assert client.app.state.service.registry.get("tiny") is engine  # type: ignore[attr-defined]


def test_a_copy_of_a_model_is_served_under_its_folder_name(start_client: Callable[..., TestClient], repo: Path) -> None:
    shutil.copytree(repo / "tiny", repo / "canary")  # an A/B copy: its manifest still says "tiny"
    client = start_client(model_repo=repo)
    assert client.post("/classify?model=canary", content=PNG, headers=IMAGE).json()["model"] == "canary"
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(PNG).decode()]}
    answer = client.post("/v2/models/canary/infer", json={"inputs": [image]}).json()
    assert answer["model_name"] == "canary"
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["canary", "other", "tiny"]
    metrics = samples(client)
    assert value(metrics, "dynadapter_requests_total", model="canary", version="2", code="200") == 2
    assert value(metrics, "dynadapter_requests_total", model="tiny", version="2", code="200") == 0
    assert client.post("/v2/repository/models/canary/unload").status_code == 200
    wait_for(lambda: ("dynadapter_model_memory_bytes", canary_2) not in samples(client))
    assert ("dynadapter_model_memory_bytes", tiny_2) in samples(client)  # tiny's series stay
    assert client.post("/classify?model=tiny", content=PNG, headers=IMAGE).json()["model"] == "tiny"


canary_2 = frozenset({("model", "canary"), ("version", "2")})
tiny_2 = frozenset({("model", "tiny"), ("version", "2")})
tiny_1 = frozenset({("model", "tiny"), ("version", "1")})


def test_retiring_an_engine_keeps_its_successors_series(
    start_client: Callable[..., TestClient], repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.rmtree(repo / "tiny" / "2")
    client = start_client(model_repo=repo, models="tiny")
    gate = gate_runner(client, monkeypatch)  # the first engine holds a request until the gate opens
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/classify", content=PNG, headers=IMAGE)
        assert gate.entered.wait(10)
        assert client.post("/v2/repository/models/tiny/unload").status_code == 200
        assert client.post("/v2/repository/models/tiny/load").status_code == 200  # a new engine, same labels
        gate.open.set()
        assert held.result().status_code == 200
    retiring = client.app.state.service.registry._retiring  # type: ignore[attr-defined]
    wait_for(lambda: not retiring)  # the first engine has retired
    metrics = samples(client)
    assert ("dynadapter_model_memory_bytes", tiny_1) in metrics
    assert any(name == "dynadapter_serving_info" and ("model", "tiny") in labels for name, labels in metrics)


def test_explicit_control_is_refused_while_the_repository_is_polled(
    start_client: Callable[..., TestClient], repo: Path
) -> None:
    client = start_client(model_repo=repo, repository_poll_s=0.05)
    message = (
        "explicit model load and unload are off while the repository is polled (repository_poll_s > 0): "
        "add or remove version folders instead"
    )
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/tiny/{action}")
        assert (response.status_code, response.json()) == (400, {"error": message})
    assert client.get("/v2/models/tiny/ready").json()["ready"] is True  # the unload did nothing


def test_the_poll_survives_an_unexpected_error_and_picks_up_replaced_files(
    start_client: Callable[..., TestClient],
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = start_client(model_repo=repo, models="tiny", repository_poll_s=0.05)
    registry = client.app.state.service.registry  # type: ignore[attr-defined]
    sync, failures = registry._sync, []

    async def failing_once(name: str) -> None:
        if not failures:
            failures.append(name)
            raise RuntimeError("an unexpected error in the poll")
        await sync(name)

    monkeypatch.setattr(registry, "_sync", failing_once)
    wait_for(lambda: bool(failures))
    other = client.post("/classify?model=other&top_k=2", content=PNG, headers=IMAGE)
    assert other.status_code == 404  # only tiny is listed
    before = client.post("/classify?top_k=2", content=PNG, headers=IMAGE).json()["top_k"]
    replace_version(repo, "tiny", "2", TinyWeights.random(seed=1), tmp_path_factory.mktemp("staging"))
    wait_for(lambda: client.post("/classify?top_k=2", content=PNG, headers=IMAGE).json()["top_k"] != before)
    logged = [r for r in caplog.records if r.getMessage().startswith("repository poll failed")]
    assert len(logged) == 1 and logged[0].exc_info is not None  # with its traceback


def test_readiness_follows_the_models_served(start_client: Callable[..., TestClient], repo: Path) -> None:
    client = start_client(model_repo=repo)
    for name in ("other", "tiny"):
        assert client.get("/readyz").status_code == 200
        assert client.post(f"/v2/repository/models/{name}/unload").status_code == 200
    readyz, ready = client.get("/readyz"), client.get("/v2/health/ready")
    assert (readyz.status_code, readyz.json()["error"]["code"]) == (503, "not_ready")
    assert (ready.status_code, ready.json()) == (503, {"ready": False, "error": "no model is served"})
    assert client.post("/classify", content=PNG, headers=IMAGE).status_code == 503
    assert client.post("/v2/repository/models/tiny/load").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_readiness_is_strict_every_model_of_the_repository_must_serve(
    start_client: Callable[..., TestClient], repo: Path
) -> None:
    """As Triton's default --strict-readiness: a model folder the poll cannot load makes the service unready
    (saying which), while the models that load keep answering; ready again once the folder is fixed."""
    client = start_client(model_repo=repo, repository_poll_s=0.05)
    staging = repo / ".staging"  # hidden: no model; corrupted there, then moved in at once
    shutil.copytree(repo / "other", staging)
    corrupt(staging / "1")
    staging.rename(repo / "broken")
    wait_for(lambda: client.get("/readyz").status_code == 503)
    readyz, ready = client.get("/readyz").json(), client.get("/v2/health/ready").json()
    why = "model(s) 'broken' should serve and do not (the repository index says why)"
    assert readyz["error"] == {"code": "not_ready", "message": why}
    assert ready == {"ready": False, "error": why}
    assert client.post("/classify?model=tiny", content=PNG, headers=IMAGE).status_code == 200
    shutil.rmtree(repo / "broken")
    wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_the_default_model_must_serve_for_readiness(start_client: Callable[..., TestClient], repo: Path) -> None:
    client = start_client(model_repo=repo, model_name="tiny")
    assert client.post("/v2/repository/models/tiny/unload").status_code == 200
    assert client.get("/readyz").status_code == 503  # 'other' still serves, but the default does not
    assert client.get("/v2/health/ready").status_code == 503


def test_serve_refuses_a_precision_one_model_cannot_serve_with_one_line(repo: Path) -> None:
    from dynadapter.service.main import serve
    from dynadapter.service.settings import Settings

    with pytest.raises(SystemExit) as exit_:
        serve(Settings(model_repo=repo, precision="int8", providers="cpu"))
    message = str(exit_.value.code)
    assert message.startswith("dynadapter serve: cannot load the model: model 'other' version 1: no int8-")
    assert "\n" not in message


def test_a_refused_replacement_leaves_the_serving_engine_its_series(
    start_client: Callable[..., TestClient],
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dynadapter.service.engine import Engine

    client = start_client(model_repo=repo, models="tiny")
    before = client.post("/classify?top_k=2", content=PNG, headers=IMAGE).json()["top_k"]
    replace_version(repo, "tiny", "2", TinyWeights.random(seed=1), tmp_path_factory.mktemp("staging"))

    def broken(self: Engine) -> None:
        raise RuntimeError("no warm-up today")

    monkeypatch.setattr(Engine, "warm_up", broken)
    response = client.post("/v2/repository/models/tiny/load")
    assert response.status_code == 400
    assert response.json() == {"error": "failed to load 'tiny': tiny/2: warm-up failed: no warm-up today"}
    assert client.post("/classify?top_k=2", content=PNG, headers=IMAGE).json()["top_k"] == before  # the old files
    assert ("dynadapter_model_memory_bytes", tiny_2) in samples(client)
    assert client.post("/v2/repository/models/tiny/unload").status_code == 200  # the old engine retires...
    wait_for(lambda: not client.app.state.service.registry._retiring)  # type: ignore[attr-defined]
    assert ("dynadapter_model_memory_bytes", tiny_2) not in samples(client)  # ...and its series go with it


def test_readiness_and_polled_control_on_a_real_server(repo: Path) -> None:
    with serving(repo, models="tiny") as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v2/repository/models/tiny/unload").status_code == 200
        assert http.get("/readyz").status_code == 503
        assert (http.get("/v2/health/ready").status_code, http.get("/v2/health/ready").json()["ready"]) == (503, False)
        assert http.post("/v2/repository/models/tiny/load").status_code == 200
        assert http.get("/readyz").status_code == 200 and http.get("/v2/health/ready").json() == {"ready": True}
    with serving(repo, models="tiny", repository_poll_s="0.05") as server, httpx.Client(base_url=server.url) as http:
        refused = http.post("/v2/repository/models/tiny/unload")
        assert (refused.status_code, refused.json()["error"].split(" (")[0]) == (
            400,
            "explicit model load and unload are off while the repository is polled",
        )
        assert http.get("/v2/models/tiny/ready").json()["ready"] is True
    assert "Traceback" not in server.output
