"""docker/compose.yaml and what it mounts: Prometheus' configuration and Grafana's provisioning."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's relative bind mounts, resolved like compose does."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((DOCKER / source).resolve(), target))
    return mounts


def test_compose_runs_the_service_prometheus_and_grafana() -> None:
    assert set(SERVICES) == {"dynadapter", "prometheus", "grafana", "jaeger"}
    build = SERVICES["dynadapter"]["build"]
    assert ((DOCKER / build["context"]).resolve() / build["dockerfile"]) == ROOT / "Dockerfile"
    assert SERVICES["dynadapter"]["ports"] == ["8000:8000", "8001:8001"]  # REST, OIP gRPC
    for name in ("prometheus", "grafana", "jaeger"):
        assert re.fullmatch(r"docker\.io/[\w/-]+:v?\d+\.\d+\.\d+", SERVICES[name]["image"]), "pin the version"


def test_jaeger_runs_only_with_the_tracing_profile_and_tracing_stays_off_without_it() -> None:
    """docs/tracing.md: `OTEL_TRACES_EXPORTER=otlp docker compose --profile tracing up` turns both on."""
    assert SERVICES["jaeger"]["profiles"] == ["tracing"] and "profiles" not in SERVICES["dynadapter"]
    environment = SERVICES["dynadapter"]["environment"]
    assert environment["OTEL_TRACES_EXPORTER"] == "${OTEL_TRACES_EXPORTER:-none}"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-http://jaeger:4318}"
    assert "--set=receivers.otlp.protocols.http.endpoint=0.0.0.0:4318" in SERVICES["jaeger"]["command"]


def test_every_mounted_file_exists() -> None:
    mounts = [m for s in SERVICES.values() for m in bind_mounts(s)]
    assert len(mounts) == 3
    for host, _ in mounts:
        assert host.exists(), host
    named = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named <= set(COMPOSE["volumes"])


def test_prometheus_scrapes_the_service_by_its_compose_name() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dynadapter"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["dynadapter:8000"]
    assert "/etc/prometheus/prometheus.yml" in {t for _, t in bind_mounts(SERVICES["prometheus"])}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_prometheus_config_passes_promtool() -> None:
    done = subprocess.run(
        ["promtool", "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisions_the_datasource_and_dashboard_the_dashboard_refers_to() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dynadapter.yaml").read_text())["providers"]
    mounts = dict((t, h) for h, t in bind_mounts(SERVICES["grafana"]))
    assert mounts["/etc/grafana/provisioning"] == provisioning
    dashboards_dir = mounts[provider["options"]["path"]]
    dashboard = json.loads((dashboards_dir / "dynadapter.json").read_text())
    refs = {json.dumps(p["datasource"], sort_keys=True) for p in dashboard["panels"]}
    assert refs == {json.dumps({"type": "prometheus", "uid": datasource["uid"]}, sort_keys=True)}


def test_the_gpu_override_reserves_an_nvidia_gpu_and_requires_cuda() -> None:
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())["services"]["dynadapter"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["DYNADAPTER_PROVIDERS"] == "cuda"
    assert gpu["build"]["args"]["WITH_CUDA_LIBS"] == "1"


def test_the_image_exposes_and_compose_publishes_the_rest_and_grpc_ports() -> None:
    from dynadapter.service.settings import Settings

    defaults = Settings.model_fields
    ports = [defaults["port"].default, defaults["grpc_port"].default]
    exposed = re.findall(r"^EXPOSE (.+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert exposed == [" ".join(map(str, ports))]
    assert SERVICES["dynadapter"]["ports"] == [f"{port}:{port}" for port in ports]
