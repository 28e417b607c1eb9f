"""Model names and versions are confined to the model repository (issue 30, item 1), on every route that
takes one, against a real server: Triton's "model name cannot escape model repository" (server
#8399/#8400, CVE-2026-24208). Requests are sent with http.client, which sends the path as written
(httpx would remove the dot segments before they reach the server)."""

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dynadapter.contract.model_repository import (
    InvalidModelName,
    check_model_name,
    check_version,
    model_folders,
    model_path,
    version_folders,
)
from tests.support.service import ServiceProcess, serving
from tests.support.tiny_onnx_model import TinyWeights, png_bytes, write_escaping_layout, write_model_version

PNG = png_bytes(0)

#: (name as sent in the URL, status on a path route, status as `?model=`): 400 for a name the rule
#: refuses; 404 where the decoded name holds a '/' (no route matches) or names no served model.
HOSTILE_NAMES = [
    ("..", 400, 400),
    (".", 400, 400),
    ("%2E%2E", 400, 400),
    ("%2e", 400, 400),
    ("a%2Fb", 404, 400),
    ("a%5Cb", 400, 400),
    ("%00", 400, 400),
    ("x%0A", 400, 400),
    ("%2E%2E%2Foutside", 404, 400),
    ("escape", 404, 404),  # a symlink model folder pointing outside the repository: never served
    ("-x", 400, 400),
    ("n" * 300, 400, 400),
]
#: (version as sent, status on a path route, status as `?version=`): `?version=` is a query parameter
#: of /classify, whose malformed values are 422 like its others; digits too long for a folder are 400.
HOSTILE_VERSIONS = [
    ("..%2F1", 404, 422),
    ("..", 400, 422),
    ("%EF%BC%91", 400, 422),  # fullwidth digit one: str.isdigit() says yes
    ("%D9%A3", 400, 422),  # Arabic-Indic three
    ("%C2%B2", 400, 422),  # superscript two
    ("-1", 400, 422),
    ("1.0", 400, 422),
    ("1" * 40, 400, 400),
    ("7", 404, 404),  # a version folder that links outside the repository: never served
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, weights: TinyWeights) -> Path:
    """root/repo/tiny/1 served; root/1 (what `..` would name), root/outside/1, the link repo/escape ->
    root/outside and the version link repo/tiny/7 -> root/outside/1: canaries outside the repository."""
    root = tmp_path_factory.mktemp("names")
    write_escaping_layout(root, weights)
    return root


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[ServiceProcess]:
    with serving(layout / "repo", version_policy="all") as process:
        yield process


def send(server: ServiceProcess, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, str]:
    """One request with `path` sent byte for byte as given; (status, body text)."""
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def name_routes(name: str) -> list[tuple[str, str]]:
    """Every route that takes a model name, with `name` in it."""
    model = f"/v2/models/{name}"
    return [
        ("POST", f"/v2/repository/models/{name}/load"),
        ("POST", f"/v2/repository/models/{name}/unload"),
        *[("GET", path) for path in (model, f"{model}/ready", f"{model}/config")],
        *[("GET", path) for path in (f"{model}/versions/1", f"{model}/versions/1/ready", f"{model}/versions/1/config")],
        ("POST", f"{model}/infer"),
        ("POST", f"{model}/versions/1/infer"),
    ]


def version_routes(version: str) -> list[tuple[str, str]]:
    model = f"/v2/models/tiny/versions/{version}"
    return [("GET", model), ("GET", f"{model}/ready"), ("GET", f"{model}/config"), ("POST", f"{model}/infer")]


INFER = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}).encode()


def assert_confined(server: ServiceProcess, layout: Path, status: int, text: str, expected: int, what: str) -> None:
    assert status == expected, f"{what}: {status} {text}"
    assert str(layout) not in text, f"{what} shows a server path: {text}"


@pytest.mark.parametrize(("name", "on_path", "as_query"), HOSTILE_NAMES)
def test_a_hostile_name_is_refused_on_every_route(
    server: ServiceProcess, layout: Path, name: str, on_path: int, as_query: int
) -> None:
    for method, path in name_routes(name):
        body = INFER if path.endswith("/infer") else b""
        status, text = send(server, method, path, body, **{"content-type": "application/json"})
        # A link out of the repository is a valid name: load refuses it (400), the others do not serve it.
        expected = 400 if name == "escape" and path.endswith("/load") else on_path
        assert_confined(server, layout, status, text, expected, f"{method} {path}")
    status, text = send(server, "POST", f"/classify?model={name}", PNG, **{"content-type": "image/png"})
    assert_confined(server, layout, status, text, as_query, f"/classify?model={name}")


@pytest.mark.parametrize(("version", "on_path", "as_query"), HOSTILE_VERSIONS)
def test_a_hostile_version_is_refused_on_every_route(
    server: ServiceProcess, layout: Path, version: str, on_path: int, as_query: int
) -> None:
    for method, path in version_routes(version):
        status, text = send(server, method, path, INFER if method == "POST" else b"")
        assert_confined(server, layout, status, text, on_path, f"{method} {path}")
    status, text = send(server, "POST", f"/classify?model=tiny&version={version}", PNG, **{"content-type": "image/png"})
    assert_confined(server, layout, status, text, as_query, f"/classify?version={version}")


def test_nothing_outside_the_repository_is_ever_served(server: ServiceProcess, layout: Path) -> None:
    """After every hostile request (this runs last in the module), only tiny version 1 serves."""
    for name, _, _ in HOSTILE_NAMES:
        send(server, "POST", f"/v2/repository/models/{name}/load")
    status, text = send(server, "GET", "/v1/models")
    assert status == 200
    assert [(m["name"], m["version"]) for m in json.loads(text)["models"]] == [("tiny", "1")]
    status, text = send(server, "POST", "/v2/repository/index")
    assert json.loads(text) == [{"name": "tiny", "version": "1", "state": "READY"}]  # no 'escape', no '..'
    status, text = send(server, "POST", "/v2/repository/models/escape/load")
    assert (status, json.loads(text)) == (400, {"error": "model 'escape' lies outside the model repository (a link?)"})
    status, text = send(server, "POST", "/v2/repository/models/..%2F..%2Fetc/load")
    assert status == 404
    loaded = [line for line in server.output.splitlines() if "loaded model" in line]
    assert loaded and all(" loaded model tiny version 1 from " in line for line in loaded), loaded


def test_load_errors_name_the_model_never_a_server_path(server: ServiceProcess, layout: Path) -> None:
    status, text = send(server, "POST", "/v2/repository/models/missing/load")
    assert status == 400
    message = json.loads(text)["error"]
    assert "missing" in message and str(layout) not in message and "the model repository" in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"parameters": {"config": "{}"}}', "load: parameter 'config' is not supported"),
        (
            b'{"parameters": {"file:1/segment_0.onnx": "AAAA"}}',
            "load: parameter 'file:1/segment_0.onnx' is not supported",
        ),
        (b'{"parameters": []}', "load: 'parameters' must be an object"),
        (b'{"config": {}}', "load: the body may only hold 'parameters'"),
        (b"[1]", "load: the body may only hold 'parameters'"),
        (b"{", 'load: the body must be JSON: {} or {"parameters": {}}'),
    ],
)
def test_load_refuses_parameters_it_does_not_support(server: ServiceProcess, body: bytes, expected: str) -> None:
    """Triton's CVE-2023-31036 was a load route that took file overrides: nothing of the kind is read."""
    status, text = send(server, "POST", "/v2/repository/models/tiny/load", body, **{"content-type": "application/json"})
    assert (status, json.loads(text)) == (400, {"error": expected})


@pytest.mark.parametrize("body", [b"", b"{}", b'{"parameters": {}}'])
def test_load_accepts_an_empty_body(server: ServiceProcess, body: bytes) -> None:
    assert send(server, "POST", "/v2/repository/models/tiny/load", body)[0] == 200


def test_unload_takes_unload_dependents_false_only(layout: Path) -> None:
    with serving(layout / "repo") as server:
        refused = send(
            server, "POST", "/v2/repository/models/tiny/unload", b'{"parameters": {"unload_dependents": true}}'
        )
        assert (refused[0], json.loads(refused[1])) == (
            400,
            {"error": "unload: parameter 'unload_dependents' can only be false"},
        )
        other = send(server, "POST", "/v2/repository/models/tiny/unload", b'{"parameters": {"force": 1}}')
        assert (other[0], json.loads(other[1])) == (400, {"error": "unload: parameter 'force' is not supported"})
        assert send(server, "GET", "/v2/models/tiny/ready")[0] == 200  # both refused: nothing unloaded
        body = b'{"parameters": {"unload_dependents": false}}'
        assert send(server, "POST", "/v2/repository/models/tiny/unload", body)[0] == 200
        assert send(server, "GET", "/v2/models/tiny/ready")[0] == 404


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-x", "a/b", "a\\b", "x\n", "x\x00", "１", "é", "n" * 129])
def test_the_contract_refuses_what_is_no_model_name(name: str) -> None:
    with pytest.raises(InvalidModelName, match="is not a model name"):
        check_model_name(name)


@pytest.mark.parametrize("version", ["", "１", "٣", "²", "-1", "1.0", "1\n", "../1", "1" * 19])
def test_the_contract_refuses_what_is_no_version(version: str) -> None:
    with pytest.raises(InvalidModelName, match="is not a model version"):
        check_version(version)


def test_the_contract_lists_only_folders_inside_the_repository(layout: Path) -> None:
    repo = layout / "repo"
    assert model_folders(repo) == ["tiny"]  # 'escape' links outside
    assert version_folders(repo, "tiny") == ["1"]  # '7' links outside
    assert model_path(repo, "tiny", "1") == repo / "tiny" / "1"
    with pytest.raises(InvalidModelName, match="lies outside the model repository"):
        model_path(repo, "escape")


def test_a_segment_that_links_outside_the_repository_is_refused(tmp_path: Path, weights: TinyWeights) -> None:
    """A manifest's file names are plain names, but the file itself may be a link: it is not followed out."""
    from dynadapter.contract.model_repository import ModelLoadError, load_model

    outside = write_model_version(tmp_path / "outside", weights, "tiny", "1")
    inside = write_model_version(tmp_path / "repo", weights, "tiny", "1")
    (inside / "segment_0.onnx").unlink()
    (inside / "segment_0.onnx").symlink_to(outside / "segment_0.onnx")
    with pytest.raises(ModelLoadError, match=r"segment_0\.onnx: links outside the model repository"):
        load_model(tmp_path / "repo", "tiny", "1")


def test_a_model_not_served_is_answered_with_the_names_that_are(tmp_path: Path) -> None:
    """`?model=nope` and OIP's path say which models are served (names only, never a path), and a missing
    version which versions of that model are."""
    repo = tmp_path / "repo"
    weights = TinyWeights.random(seed=0)
    write_model_version(repo, weights, name="tiny")
    write_model_version(repo, weights, name="other", version="2")
    served = "model 'nope' is not served; served: other, tiny"
    with serving(repo) as server:
        status, text = send(server, "POST", "/classify?model=nope", PNG, **{"content-type": "image/png"})
        assert (status, json.loads(text)) == (404, {"error": {"code": "model_not_found", "message": served}})
        for method, path in (
            ("POST", "/v2/models/nope/infer"),
            ("GET", "/v2/models/nope"),
            ("GET", "/v2/models/nope/ready"),
        ):
            status, text = send(server, method, path, INFER if method == "POST" else b"")
            assert (status, json.loads(text)) == (404, {"error": served}), path
        status, text = send(server, "POST", "/v2/repository/models/nope/unload")
        assert (status, json.loads(text)) == (404, {"error": served})
        status, text = send(server, "POST", "/classify?model=other&version=7", PNG, **{"content-type": "image/png"})
        message = "version '7' of model 'other' is not served; served: 2"
        assert (status, json.loads(text)) == (404, {"error": {"code": "model_not_found", "message": message}})
