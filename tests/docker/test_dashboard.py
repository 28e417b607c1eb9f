"""The Grafana dashboard's PromQL: only the metric names and labels of the README's metrics list
("Serving"), which the service really exports, and (where promtool is installed) expressions that Prometheus parses."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dynadapter.service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "dynadapter.json").read_text())

# README, "Serving": name -> (type, labels).
DOCUMENTED_METRICS = {
    "dynadapter_requests_total": ("counter", {"model", "version", "code"}),
    "dynadapter_request_duration_seconds": ("histogram", {"model", "version"}),
    "dynadapter_exits_total": ("counter", {"model", "version", "exit"}),
    "dynadapter_flops_used_total": ("counter", {"model", "version"}),
    "dynadapter_flops_saved_total": ("counter", {"model", "version"}),
    "dynadapter_stage_duration_seconds": ("histogram", {"model", "version", "stage"}),
    "dynadapter_batch_size": ("histogram", {"model", "version"}),
    "dynadapter_segment_batch_images": ("histogram", {"model", "version", "segment"}),  # issue #32
    "dynadapter_inflight_requests": ("gauge", {"model", "version"}),
    "dynadapter_cancelled_images_total": ("counter", {"model", "version"}),  # issue #30
    "dynadapter_model_memory_bytes": ("gauge", {"model", "version"}),
    "dynadapter_serving_info": ("gauge", {"model", "version", "backend", "precision", "device"}),
    # runtime adaptation (issue #17)
    "dynadapter_exit_reasons_total": ("counter", {"model", "version", "reason"}),
    "dynadapter_operating_threshold": ("gauge", {"model", "version"}),
    "dynadapter_operating_flops_fraction": ("gauge", {"model", "version"}),
    "dynadapter_latency_target_violations_total": ("counter", {"model", "version"}),
    "dynadapter_degraded_seconds_total": ("counter", {"model", "version"}),
    "dynadapter_shadow_images_total": ("counter", {"model", "version", "exit"}),
    "dynadapter_shadow_agreements_total": ("counter", {"model", "version", "exit"}),
    "dynadapter_exit_agreement": ("gauge", {"model", "version", "exit"}),
    "dynadapter_live_threshold": ("gauge", {"model", "version", "mode", "exit"}),
    "dynadapter_shadow_flops_total": ("counter", {"model", "version"}),
}


def spec_series() -> dict[str, set[str]]:
    """Every series name a scrape can show -> its label names."""
    series = {}
    for name, (kind, labels) in DOCUMENTED_METRICS.items():
        if kind == "histogram":
            series.update({f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels})
        else:
            series[name] = labels
    return series


SERIES = spec_series()
# Grafana's variables, replaced by values Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$model": ".*"}


def expressions() -> list[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    return exprs


def concrete(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_the_service_exports_exactly_the_spec_series() -> None:
    metrics = ServiceMetrics()
    metrics.declare_model("m", "1", num_exits=2, memory_bytes=1)
    metrics.declare_serving("m", "1", "openvino", "int8-openvino", "cpu")
    metrics.record_request("m", "1", 200, 0.01)
    # a version served with the latency controller and live calibration on
    metrics.declare_adaptation("m", "1", num_exits=2, modes=["balanced"], live=True)
    metrics.record_operating_point("m", "1", threshold=0.5, flops=0.4)
    metrics.record_live_calibration("m", "1", {"balanced": (0.9,)}, agreement=[0.99])
    exported = {
        sample.name: set(sample.labels)
        for family in metrics.registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }
    assert exported == SERIES


def test_every_expression_uses_spec_metric_names_and_their_labels_only() -> None:
    for expr in expressions():
        names = re.findall(r"\b(dynadapter_\w+)", expr)
        assert names, f"no dyn-adapter metric in {expr}"
        for name in names:
            assert name in SERIES, f"{name} is not a documented series (in {expr})"
        allowed = set().union(*(SERIES[n] for n in names))
        for name, selector in re.findall(r"\b(dynadapter_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in SERIES[name], f"{name} has no label {label!r} (in {expr})"
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (x.strip() for x in grouping.split(","))):
                assert label in allowed, f"grouping by {label!r}, which {names} lack (in {expr})"


def test_the_dashboard_has_the_panels_an_operator_needs() -> None:
    exprs = " ".join(expressions())
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in DASHBOARD["panels"]}
    assert "rate(dynadapter_requests_total" in panels["Requests/s by status code"]
    assert "rate(dynadapter_cancelled_images_total" in panels["Requests/s by status code"]
    latency = panels["Request latency p50 / p95"]
    assert "histogram_quantile(0.5," in latency and "histogram_quantile(0.95," in latency
    assert "dynadapter_request_duration_seconds_bucket" in latency
    assert "sum by (exit)" in panels["Exit distribution"] and "dynadapter_exits_total" in panels["Exit distribution"]
    assert "dynadapter_inflight_requests" in panels["In-flight requests"]
    saved, used = (f'rate(dynadapter_flops_{k}_total{{model=~"$model"}}[$__rate_interval])' for k in ("saved", "used"))
    assert panels["FLOPs saved"] == f"sum({saved}) / (sum({used}) + sum({saved}))"
    assert "dynadapter_stage_duration_seconds_bucket" in exprs and "dynadapter_batch_size" in exprs
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_the_dashboard_shows_the_run_time_adaptation() -> None:
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in DASHBOARD["panels"]}
    threshold, flops = panels["Operating point"]
    assert "dynadapter_operating_threshold{" in threshold and "dynadapter_operating_flops_fraction{" in flops
    violations, degraded = panels["Latency target: violations and degraded time"]
    assert "rate(dynadapter_latency_target_violations_total{" in violations
    assert "rate(dynadapter_degraded_seconds_total{" in degraded
    reasons = panels["Exit reasons (deadline exits)"]
    assert reasons == ['sum by (reason) (rate(dynadapter_exit_reasons_total{model=~"$model"}[$__rate_interval]))']
    assert panels["Agreement with the last exit, per exit"] == [
        'min by (exit) (dynadapter_exit_agreement{model=~"$model"})'
    ]
    assert "by (mode, exit) (dynadapter_live_threshold{" in panels["Live thresholds"][0]
    shadowed, shadow_flops = panels["Shadow work"]
    assert "dynadapter_shadow_images_total" in shadowed and "dynadapter_exits_total" in shadowed
    assert "dynadapter_shadow_flops_total" in shadow_flops and "dynadapter_flops_used_total" in shadow_flops
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in DASHBOARD["panels"]]
    assert len(set(grid)) == len(grid)  # no panel drawn over another


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:expr_{i}", "expr": concrete(e)}
        for i, e in enumerate(t["expr"] for p in DASHBOARD["panels"] for t in p["targets"])
    ]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout
