"""docker/k8s/kserve: the InferenceService validates offline, strictly (an unknown field fails), against
KServe's own CRD schema (vendored) and the models its Python package generates, and its pod part against
the Kubernetes schemas (kubernetes-validate); it runs the serving image as a v2 custom predictor with OIP
probes, REST and gRPC ports, scaled by KEDA on the same trigger as docker/k8s/keda."""

import copy
import re

import jsonschema
import kserve.models
import kubernetes.client.models
import kubernetes_validate
import pytest

from tests.support.k8s import K8S, VERSIONS, crd_validator, load

MANIFEST = load(K8S / "kserve" / "inferenceservice.yaml")
SCALED_OBJECT = load(K8S / "keda" / "scaledobject.yaml")
# V1beta1MetricQuantity: a Kubernetes quantity ("8", "150m"), which the package declares but does not define.
PRIMITIVES = {"str", "int", "bool", "float", "object", "datetime", "V1beta1MetricQuantity"}


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


def test_the_inference_service_validates_against_kserves_crd_schema() -> None:
    crd_validator("kserve-inferenceservice").validate(MANIFEST)


def broken(edit: str, value: object) -> dict:
    """The InferenceService with the predictor field at the dotted path ``edit`` set to ``value``."""
    manifest = copy.deepcopy(MANIFEST)
    *parents, last = edit.split(".")
    node = manifest["spec"]["predictor"]
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return manifest


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (broken("minReplica", 1), "'minReplica' was unexpected"),
        (broken("autoScaling.metrics.0.external.metric.backend", "prom"), "'prom' is not one of"),
        (broken("autoScaling.metrics.0.external.target.type", "Average"), "'Average' is not one of"),
        (broken("autoScaling.metrics.0.external.metric.threshold", "8"), "'threshold' was unexpected"),
        (broken("containers.0.ports.1.containerPort", "8001"), "'8001' is not of type 'integer'"),
    ],
    ids=["misspelled", "backend", "target-type", "keda-spelling", "port-as-string"],
)
def test_a_broken_inference_service_fails_the_crd_schema(manifest: dict, message: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=message):
        crd_validator("kserve-inferenceservice").validate(manifest)


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


def test_a_v2_custom_predictor_probed_on_oip_serving_rest_and_grpc() -> None:
    predictor = MANIFEST["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["name"] == "kserve-container" and env["PROTOCOL"] == "v2"
    assert env["DYNADAPTER_MODEL_REPO"] == "/mnt/models" and env["STORAGE_URI"]  # the storage initializer's target
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # KServe's Service: the first port as port 80 (REST), the next as itself; "grpc" in a name means h2c.
    http, grpc = container["ports"]
    assert (http["name"], http["containerPort"]) == ("http", 8000)
    assert container["readinessProbe"]["httpGet"]["port"] == 8000
    assert (grpc["name"], grpc["containerPort"]) == ("grpc", 8001) and env["DYNADAPTER_GRPC_PORT"] == "8001"
    assert predictor["securityContext"]["runAsNonRoot"] is True
    assert env["DYNADAPTER_INTRA_OP_THREADS"] == container["resources"]["limits"]["cpu"]


def test_keda_scales_it_in_standard_mode_on_the_scaled_objects_trigger() -> None:
    annotations = MANIFEST["metadata"]["annotations"]
    # KServe makes a KEDA ScaledObject only for autoscalerClass keda, and only in Standard (raw) mode.
    assert annotations["serving.kserve.io/autoscalerClass"] == "keda"
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    predictor = MANIFEST["spec"]["predictor"]
    external, cpu = predictor["autoScaling"]["metrics"]
    metric, target = external["external"]["metric"], external["external"]["target"]
    (trigger,) = [t for t in SCALED_OBJECT["spec"]["triggers"] if t["type"] == "prometheus"]
    assert metric["backend"] == "prometheus" and metric["serverAddress"] == trigger["metadata"]["serverAddress"]
    # KServe passes target.value as KEDA's threshold, which KEDA compares per pod (AverageValue).
    assert (target["type"], target["value"]) == ("Value", trigger["metadata"]["threshold"])
    name = MANIFEST["metadata"]["name"]
    selector = f'app_kubernetes_io_name="{SCALED_OBJECT["spec"]["scaleTargetRef"]["name"]}"'
    kserve_selector = f'serving_kserve_io_inferenceservice="{name}"'  # the label KServe puts on its pods
    assert metric["query"] == trigger["metadata"]["query"].replace(selector, kserve_selector)
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    http_port = predictor["containers"][0]["ports"][0]["containerPort"]
    assert predictor["annotations"]["prometheus.io/port"] == str(http_port)
