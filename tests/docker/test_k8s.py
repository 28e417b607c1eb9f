"""docker/k8s: every manifest, and the GPU overlay applied to them, validates offline against the
Kubernetes OpenAPI schemas bundled with kubernetes-validate (strict: unknown fields fail), and
says what the service needs (probes, non-root, one worker, resources)."""

import os
import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.support.k8s import K8S, ROOT, VERSIONS, kustomize, load

BASE = kustomize(K8S)
GPU = kustomize(K8S / "gpu")


def container(resources: dict[str, dict]) -> dict:
    (c,) = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def env(resources: dict[str, dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(resources)["env"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", ["cpu", "gpu"])
@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
def test_manifests_validate_against_the_kubernetes_schema(variant: str, kind: str, version: str) -> None:
    resource = (BASE if variant == "cpu" else GPU)[kind]
    kubernetes_validate.validate(resource, version, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(load(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert BASE["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2"


def test_the_deployment_probes_liveness_and_readiness_on_the_service_routes() -> None:
    c = container(BASE)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    port = c["ports"][0]
    assert port["containerPort"] == 8000 and port["name"] == c["readinessProbe"]["httpGet"]["port"] == "http"


def test_the_pod_and_the_service_expose_oip_grpc_on_the_services_grpc_port() -> None:
    ports = {p["name"]: p["containerPort"] for p in container(BASE)["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    assert env(BASE)["DYNADAPTER_GRPC_PORT"] == str(ports["grpc"])
    service_ports = {p["name"]: p for p in BASE["Service"]["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == 8001 and service_ports["grpc"]["targetPort"] == "grpc"
    assert service_ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"  # HTTP/2 in clear text
    assert (service_ports["http"]["port"], service_ports["http"]["targetPort"]) == (80, "http")


def test_the_pod_runs_as_the_image_user_without_privileges() -> None:
    pod = BASE["Deployment"]["spec"]["template"]["spec"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_uid = int(re.search(r"^ARG APP_UID=(\d+)", dockerfile, re.MULTILINE).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    sc = container(BASE)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert "/tmp" in {m["mountPath"] for m in container(BASE)["volumeMounts"]}


def test_one_worker_per_pod_with_threads_matching_the_cpu_limit() -> None:
    c = container(BASE)
    assert "command" not in c and "args" not in c, "the image's `python -m dynadapter.service` runs one worker"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    assert env(BASE)["DYNADAPTER_INTRA_OP_THREADS"] == c["resources"]["limits"]["cpu"]
    assert env(BASE)["DYNADAPTER_PROVIDERS"] == "cpu"
    grace = BASE["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace > int(env(BASE)["DYNADAPTER_SHUTDOWN_TIMEOUT_S"]) + pre_stop


def test_the_service_and_the_autoscaler_point_at_the_deployment() -> None:
    deployment = BASE["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert BASE["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert BASE["Service"]["spec"]["ports"][0]["targetPort"] == container(BASE)["ports"][0]["name"]
    target = BASE["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_the_gpu_variant_asks_for_one_gpu_and_refuses_to_fall_back_to_cpu() -> None:
    limits = container(GPU)["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert limits["cpu"] == container(BASE)["resources"]["limits"]["cpu"]  # merged, not replaced
    assert env(GPU)["DYNADAPTER_PROVIDERS"] == "cuda"
    assert env(GPU)["DYNADAPTER_INTRA_OP_THREADS"] == env(BASE)["DYNADAPTER_INTRA_OP_THREADS"]
    tolerations = GPU["Deployment"]["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert "nvidia.com/gpu" not in container(BASE)["resources"]["limits"]


def test_the_smokes_kube_play_substitution_changes_only_the_image_and_the_replicas() -> None:
    """docker/smoke.sh runs deployment.yaml under `podman kube play` after one documented sed: the smoke
    build's image and one replica. Run that very command; everything else must come through unchanged."""
    smoke = (ROOT / "docker" / "smoke.sh").read_text()
    (command,) = re.findall(r'^\s*\{ (sed -e .*"\$deployment")$', smoke, re.MULTILINE)
    image = "localhost/dynadapter:smoke"
    played = subprocess.run(
        ["bash", "-c", command],
        env={"PATH": os.environ["PATH"], "image": image, "deployment": str(K8S / "deployment.yaml")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = load(K8S / "deployment.yaml")
    expected["spec"]["replicas"] = 1
    expected["spec"]["template"]["spec"]["containers"][0]["image"] = image
    assert yaml.safe_load(played) == expected
