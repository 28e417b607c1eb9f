"""docker/k8s/kserve: the InferenceService validates offline, strictly (an unknown field fails), against the
models KServe's own Python package generates from its CRDs, and its pod part against the Kubernetes
schemas (kubernetes-validate); it runs the serving image as a v2 custom predictor with OIP probes."""

import re
from pathlib import Path

import kserve.models
import kubernetes.client.models
import kubernetes_validate
import pytest
import yaml

from tests.support.k8s import VERSIONS

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((ROOT / "docker" / "k8s" / "kserve" / "inferenceservice.yaml").read_text())
PRIMITIVES = {"str", "int", "bool", "float", "object", "datetime"}


def check(value: object, type_name: str, where: str) -> None:
    """`value` (parsed YAML) conforms to the generated model `type_name`; unknown fields fail."""
    if type_name in PRIMITIVES:
        assert not isinstance(value, dict | list), f"{where}: {type_name} expected"
        return
    listed = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if listed:
        assert isinstance(value, list), f"{where}: a list expected"
        for i, item in enumerate(value):
            check(item, listed.group(1), f"{where}[{i}]")
        return
    mapped = re.fullmatch(r"(?:dict\(str, |Dict\[str, )(.+)[\)\]]", type_name)
    if mapped:
        assert isinstance(value, dict), f"{where}: a map expected"
        for key, item in value.items():
            check(item, mapped.group(1), f"{where}.{key}")
        return
    model = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    assert isinstance(value, dict), f"{where}: an object ({type_name}) expected"
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    for key, item in value.items():
        assert key in fields, f"{where}: {type_name} has no field {key!r}"
        check(item, model.openapi_types[fields[key]], f"{where}.{key}")


def test_the_inference_service_validates_against_kserves_models() -> None:
    assert (MANIFEST["apiVersion"], MANIFEST["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    check({k: v for k, v in MANIFEST.items() if k not in ("apiVersion", "kind")}, "V1beta1InferenceService", "isvc")


def test_a_misspelled_field_fails_the_check() -> None:
    with pytest.raises(AssertionError, match="no field 'minReplica'"):
        check({"spec": {"predictor": {"minReplica": 1}}}, "V1beta1InferenceService", "isvc")


@pytest.mark.parametrize("version", VERSIONS)
def test_the_predictor_pod_validates_against_the_kubernetes_schema(version: str) -> None:
    predictor = MANIFEST["spec"]["predictor"]
    pod_fields = ("containers", "securityContext", "automountServiceAccountToken")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dynadapter"},
        "spec": {key: predictor[key] for key in pod_fields},
    }
    kubernetes_validate.validate(pod, version, strict=True)


def test_a_v2_custom_predictor_probed_on_oip_and_scaled_on_concurrency() -> None:
    predictor = MANIFEST["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["name"] == "kserve-container" and env["PROTOCOL"] == "v2"
    assert env["DYNADAPTER_MODEL_REPO"] == "/mnt/models" and env["STORAGE_URI"]  # the storage initializer's target
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    (port,) = container["ports"]  # Knative routes to exactly one port
    assert port["containerPort"] == 8000 == container["readinessProbe"]["httpGet"]["port"]
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 16)
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert env["DYNADAPTER_INTRA_OP_THREADS"] == container["resources"]["limits"]["cpu"]
