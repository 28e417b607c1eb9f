"""docker/k8s/keda: the KEDA ScaledObject validates offline against KEDA's own CRD schema (vendored,
strict: an unknown field fails), replaces the CPU HorizontalPodAutoscaler in its overlay, scales on a
metric the service exports, per pod, at the in-flight target the bench gives (docs/capacity.md)."""

import copy
import json
import re

import jsonschema
import pytest

from dynadapter.service.metrics import ServiceMetrics
from tests.support.k8s import K8S, ROOT, crd_validator, kustomize, load

KEDA = kustomize(K8S / "keda")
BASE = kustomize(K8S)
SCALED_OBJECT = load(K8S / "keda" / "scaledobject.yaml")
#: The p95 latency objective docs/capacity.md sizes the pods for (its worked example).
P95_OBJECTIVE_MS = 300


def triggers(scaled_object: dict) -> dict[str, dict]:
    return {t["type"]: t for t in scaled_object["spec"]["triggers"]}


def in_flight_target(rows: list[dict], modes: tuple[str, ...]) -> int:
    """docs/capacity.md's rule: the most concurrent requests per server whose p95 meets the objective in every mode."""
    within = [(r["variant"], r["concurrency"]) for r in rows if r["p95_ms"] <= P95_OBJECTIVE_MS]
    return min(max(c for variant, c in within if variant == mode) for mode in modes)


def test_the_scaled_object_validates_against_kedas_crd_schema() -> None:
    assert (SCALED_OBJECT["apiVersion"], SCALED_OBJECT["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    crd_validator("keda-scaledobject").validate(SCALED_OBJECT)


def broken(path: tuple, value: object = None, *, rename: str | None = None, drop: bool = False) -> dict:
    """The ScaledObject with the field at ``path`` set to ``value``, renamed to ``rename`` or dropped."""
    manifest = copy.deepcopy(SCALED_OBJECT)
    *parents, last = path
    node = manifest
    for key in parents:
        node = node[key]
    if rename is not None:
        node[rename] = node.pop(last)
    elif drop:
        del node[last]
    else:
        node[last] = value
    return manifest


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        # The HPA's spelling, not KEDA's (minReplicaCount): the API server would refuse it.
        (broken(("spec", "minReplicaCount"), rename="minReplicas"), "'minReplicas' was unexpected"),
        (broken(("spec", "triggers", 0, "metadata", "threshold"), 8), "8 is not of type 'string'"),
        (broken(("spec", "triggers"), []), "should be non-empty|is too short"),
        (broken(("spec", "triggers", 0, "metadata"), drop=True), "'metadata' is a required property"),
        (broken(("spec", "scaleTargetRef", "name"), drop=True), "'name' is a required property"),
        (broken(("spec", "pollingInterval"), "15s"), "'15s' is not of type 'integer'"),
    ],
    ids=["hpa-spelling", "numeric-threshold", "no-triggers", "trigger-without-metadata", "no-target", "duration"],
)
def test_a_broken_scaled_object_fails_validation(manifest: dict, message: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=message):
        crd_validator("keda-scaledobject").validate(manifest)


def test_the_keda_overlay_replaces_the_hpa_and_keeps_its_range_and_scale_down() -> None:
    assert set(KEDA) == {"Deployment", "Service", "ScaledObject"}  # two HPAs on one Deployment would fight
    assert KEDA["Deployment"] == BASE["Deployment"] and KEDA["Service"] == BASE["Service"]
    spec, hpa = KEDA["ScaledObject"]["spec"], BASE["HorizontalPodAutoscaler"]["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "dynadapter")
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    cpu = triggers(SCALED_OBJECT)["cpu"]
    assert (cpu["metricType"], cpu["metadata"]["value"]) == ("Utilization", "70")
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_the_trigger_sums_a_metric_the_service_exports_over_the_deployments_pods() -> None:
    prometheus = triggers(SCALED_OBJECT)["prometheus"]
    query = prometheus["metadata"]["query"]
    exported = {family.name for family in ServiceMetrics().registry.collect()}
    (metric,) = re.findall(r"\bdynadapter_\w+", query)
    assert metric == "dynadapter_inflight_requests" and metric in exported
    # AverageValue: the HPA divides the total by the replicas, so the query is a sum over the pods.
    assert prometheus["metricType"] == "AverageValue" and query.startswith("sum(")
    pod_labels = BASE["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert f'app_kubernetes_io_name="{pod_labels["app.kubernetes.io/name"]}"' in query


def test_the_threshold_is_the_in_flight_target_the_bench_measured() -> None:
    serve = json.loads((ROOT / "docs" / "results.json").read_text())["serve"]
    target = in_flight_target(serve["results"], ("fast", "balanced", "accurate"))
    assert triggers(SCALED_OBJECT)["prometheus"]["metadata"]["threshold"] == str(target)
