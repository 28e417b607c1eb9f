"""Schema-driven fuzzing: schemathesis generates requests for every route of the service's own OpenAPI
schema (the OIP routes included) against a real server; none may answer 5xx."""

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.service import ServiceProcess, serving


@pytest.fixture(scope="module")
def server(model_repo: Path) -> Iterator[ServiceProcess]:
    with serving(model_repo, max_wait_ms="1") as process:
        yield process


def test_no_generated_request_gets_a_5xx(server: ServiceProcess) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v2/models/{name}/infer" for op in operations)
    for operation in operations:
        if operation.path.endswith("/unload"):  # it would take the model away from the other examples
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.url, timeout=30)
            # The one 5xx a client can ask for: a deadline shorter than the first exit takes (documented 504).
            asked_for = response.status_code == 504 and "deadline_ms" in (case.query or {})
            assert response.status_code < 500 or asked_for, f"{case.method} {case.formatted_path}: {response.text}"

        no_5xx()


def test_the_schema_covers_the_oip_routes_and_every_reference_resolves(server: ServiceProcess) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/config",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
    ):
        assert path in schema["paths"], path
    infer = schema["paths"]["/v2/models/{name}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
    references = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(schema)))
    assert "InferenceRequest" in references and references <= set(schema["components"]["schemas"])
