"""Prometheus metrics (listed in the README's "Serving" section), in a registry owned by one app.

The FLOPs counters count every classified image exactly once, in FLOPs (one multiply-add = one
FLOP): used = cumulative FLOPs up to its exit less the exit heads skipped on its way, saved =
full depth (every head included) minus used; so
`rate(saved) / (rate(used) + rate(saved))` is the fraction of compute saved.
"""

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dynadapter.contract.model_repository import Manifest
from dynadapter.service.segment_runner import StageOutput

GIGA = 1e9
_MODEL = ["model", "version"]

_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own (one per app), and which engine owns
    each model version's series.

    Created with the app and kept for its life; an engine declares its series when it loads
    (`declare_model`, `declare_serving`, ...) and `forget_model` drops them when it retires, unless a
    successor has declared them since. Written on the event loop (middleware, stage observers, the
    latency controller's task); prometheus_client's metrics are themselves thread-safe.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._serving: dict[tuple[str, str], tuple[str, str, str]] = {}  # (model, version) -> its serving labels
        # (model, version) -> the engine whose series these are: a reload declares the same labels before
        # the engine it replaces retires, and that retirement must not remove its successor's series.
        self._owners: dict[tuple[str, str], object] = {}
        self._adaptation: dict[tuple[str, str], tuple[list[str], int]] = {}  # (model, version) -> (modes, exits)
        r = self.registry
        self.requests = Counter(
            "dynadapter_requests_total",
            "Inference requests (/classify and OIP infer) by HTTP status code.",
            ["model", "version", "code"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "dynadapter_grpc_requests_total",
            "Calls of the OIP gRPC service by method and gRPC status code (ModelInfer calls are also in "
            "dynadapter_requests_total, under the HTTP status of the same outcome).",
            ["method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "dynadapter_request_duration_seconds",
            "Inference request latency, from the first byte in to the response.",
            _MODEL,
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.exits = Counter(
            "dynadapter_exits_total", "Images answered by each exit.", ["model", "version", "exit"], registry=r
        )
        self.flops_used = Counter(
            "dynadapter_flops_used_total",
            "FLOPs executed (multiply-adds), per image up to its exit.",
            _MODEL,
            registry=r,
        )
        self.flops_saved = Counter(
            "dynadapter_flops_saved_total",
            "Full-depth FLOPs minus executed FLOPs, per image.",
            _MODEL,
            registry=r,
        )
        self.stage_duration = Histogram(
            "dynadapter_stage_duration_seconds",
            "Time to run one segment (stage) on one batch.",
            ["model", "version", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dynadapter_batch_size",
            "Images per inference batch.",
            _MODEL,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.segment_batch_images = Histogram(
            "dynadapter_segment_batch_images",
            "Images in one run of a segment (batch occupancy): a batch's images less those that left at the exits "
            "before it (shadowed ones included).",
            ["model", "version", "segment"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.serving = Gauge(
            "dynadapter_serving_info",
            "1 for the runtime, precision and device that serve a model version (settings backend, precision).",
            ["model", "version", "backend", "precision", "device"],
            registry=r,
        )
        self.inflight = Gauge(
            "dynadapter_inflight_requests", "Inference requests being handled now.", _MODEL, registry=r
        )
        self.exit_reasons = Counter(
            "dynadapter_exit_reasons_total",
            "Images answered, by why they left: confident (reached the threshold), deadline (the next segment "
            "would end past it), last (the last exit).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.operating_threshold = Gauge(
            "dynadapter_operating_threshold",
            "The latency controller's operating point: its uniform threshold (NaN: the default mode's own).",
            _MODEL,
            registry=r,
        )
        self.operating_flops = Gauge(
            "dynadapter_operating_flops_fraction",
            "Expected FLOPs per image at the latency controller's operating point, as a fraction of the full model.",
            _MODEL,
            registry=r,
        )
        self.target_violations = Counter(
            "dynadapter_latency_target_violations_total",
            "Control periods whose p95 latency (or expected queue delay) exceeded target_p95_ms.",
            _MODEL,
            registry=r,
        )
        self.degraded_seconds = Counter(
            "dynadapter_degraded_seconds_total",
            "Time the latency controller held requests below the default operating point, in seconds.",
            _MODEL,
            registry=r,
        )
        self.shadow_images = Counter(
            "dynadapter_shadow_images_total",
            "Shadowed images (live calibration), by the exit that answered them (the last exit agrees with itself).",
            ["model", "version", "exit"],
            registry=r,
        )
        self.shadow_agreements = Counter(
            "dynadapter_shadow_agreements_total",
            "Shadowed images, by the exit that answered them, whose answer agreed with the last exit's.",
            ["model", "version", "exit"],
            registry=r,
        )
        self.exit_agreement = Gauge(
            "dynadapter_exit_agreement",
            "Agreement with the last exit of the images answered at each early exit, over the live window.",
            ["model", "version", "exit"],
            registry=r,
        )
        self.live_threshold = Gauge(
            "dynadapter_live_threshold",
            "Each mode's live threshold at each early exit (live calibration).",
            ["model", "version", "mode", "exit"],
            registry=r,
        )
        self.shadow_flops = Counter(
            "dynadapter_shadow_flops_total",
            "FLOPs run for live calibration past the images' answers (not in flops_used or flops_saved).",
            _MODEL,
            registry=r,
        )
        self.cancelled_images = Counter(
            "dynadapter_cancelled_images_total",
            "Images whose request was cancelled before they were answered (the client went away, or the shutdown "
            "timeout passed): they left the queue, or their batch before its next segment.",
            _MODEL,
            registry=r,
        )
        self.model_memory = Gauge(
            "dynadapter_model_memory_bytes",
            "Resident memory the process grew by while loading each served model version (sessions, weights).",
            _MODEL,
            registry=r,
        )

    def declare_model(
        self, model: str, version: str, num_exits: int, memory_bytes: int, owner: object | None = None
    ) -> None:
        """Create every series of a model version at 0, so that rate() works from the first scrape;
        `owner` (the engine) owns its gauges from now on (`forget_model`)."""
        self._owners[model, version] = owner
        families = (self.flops_used, self.flops_saved, self.batch_size, self.request_duration, self.inflight)
        for family in (*families, self.cancelled_images):
            family.labels(model, version)
        for k in range(num_exits):
            self.exits.labels(model, version, str(k))
            self.stage_duration.labels(model, version, str(k))
            self.segment_batch_images.labels(model, version, str(k))
        for reason in ("confident", "deadline", "last"):
            self.exit_reasons.labels(model, version, reason)
        self.model_memory.labels(model, version).set(memory_bytes)

    def declare_serving(self, model: str, version: str, backend: str, precision: str, device: str) -> None:
        """Say what serves a model version: backend (onnxruntime, openvino), precision key (fp32-onnx,
        int8-openvino, ...) and device (cpu, cuda)."""
        self._serving[model, version] = (backend, precision, device)
        self.serving.labels(model, version, backend, precision, device).set(1)

    def forget_model(self, model: str, version: str, owner: object | None = None) -> None:
        """An unloaded version: its memory and serving gauges go (its counters stay, for rate() over the past).
        Nothing goes when the series belong to another `owner` now (a successor declared them again)."""
        if self._owners.get((model, version)) is not owner:
            return
        del self._owners[model, version]
        serving = self._serving.pop((model, version), None)
        with contextlib.suppress(KeyError):  # never declared (a load that failed half-way)
            self.model_memory.remove(model, version)
            if serving is not None:
                self.serving.remove(model, version, *serving)
        modes, num_exits = self._adaptation.pop((model, version), ([], 0))
        gauges: list[tuple[Gauge, tuple[str, ...]]] = [(self.operating_threshold, ()), (self.operating_flops, ())]
        gauges += [(self.exit_agreement, (str(k),)) for k in range(num_exits - 1)]
        gauges += [(self.live_threshold, (mode, str(k))) for mode in modes for k in range(num_exits - 1)]
        for gauge, labels in gauges:
            with contextlib.suppress(KeyError):  # a series never set
                gauge.remove(model, version, *labels)

    def record_stage(self, model: str, version: str, stage: StageOutput, manifest: Manifest) -> None:
        """One segment's run on a batch: its time, its images (the batch size at stage 0) and the images that left."""
        if stage.stage == 0:
            self.batch_size.labels(model, version).observe(stage.rows)
        self.stage_duration.labels(model, version, str(stage.stage)).observe(stage.seconds)
        self.segment_batch_images.labels(model, version, str(stage.stage)).observe(stage.rows)
        for result in stage.exits.values():
            used = manifest.used_gflops(result.exit_index, result.skipped_heads)
            self.record_image(model, version, result.exit_index, used, manifest.gflops_full)
            self.exit_reasons.labels(model, version, result.reason).inc()
        for trace in stage.shadows.values():
            beyond = manifest.gflops_full - manifest.used_gflops(trace.answered_exit, ())
            self.shadow_flops.labels(model, version).inc(max(beyond, 0.0) * GIGA)
            exit_label = str(trace.answered_exit)
            self.shadow_images.labels(model, version, exit_label).inc()
            agreed = trace.predictions[trace.answered_exit] == trace.predictions[-1]
            self.shadow_agreements.labels(model, version, exit_label).inc(int(agreed))

    def declare_adaptation(self, model: str, version: str, num_exits: int, modes: list[str], live: bool) -> None:
        """Create the controller's and (when on) live calibration's series of a model version."""
        self._adaptation[model, version] = (modes, num_exits)
        for family in (self.target_violations, self.degraded_seconds, self.shadow_flops):
            family.labels(model, version)
        if live:
            for k in range(num_exits):
                self.shadow_images.labels(model, version, str(k))
                self.shadow_agreements.labels(model, version, str(k))

    def record_operating_point(self, model: str, version: str, threshold: float | None, flops: float) -> None:
        self.operating_threshold.labels(model, version).set(float("nan") if threshold is None else threshold)
        self.operating_flops.labels(model, version).set(flops)

    def record_live_calibration(
        self, model: str, version: str, thresholds: dict[str, tuple[float, ...]], agreement: list[float | None]
    ) -> None:
        """The live thresholds of every mode, and each early exit's agreement over the window."""
        for mode, values in thresholds.items():
            for k, threshold in enumerate(values):
                self.live_threshold.labels(model, version, mode, str(k)).set(threshold)
        for k, rate in enumerate(agreement):
            if rate is not None:
                self.exit_agreement.labels(model, version, str(k)).set(rate)

    def record_image(self, model: str, version: str, exit_index: int, used_gflops: float, full_gflops: float) -> None:
        """Count one classified image: its exit, and the FLOPs it used and saved."""
        self.exits.labels(model, version, str(exit_index)).inc()
        self.flops_used.labels(model, version).inc(used_gflops * GIGA)
        self.flops_saved.labels(model, version).inc(max(full_gflops - used_gflops, 0.0) * GIGA)

    def record_grpc(self, method: str, code: str) -> None:
        """Count one gRPC call by method and status code name (OK, INVALID_ARGUMENT, ...)."""
        self.grpc_requests.labels(method, code).inc()

    def record_request(self, model: str, version: str, code: int, seconds: float) -> None:
        self.requests.labels(model, version, str(code)).inc()
        self.request_duration.labels(model, version).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
