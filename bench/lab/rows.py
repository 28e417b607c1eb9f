"""Small models of the rows the serving benchmarks keep in docs/results.json, read once where a page is rendered
(``Model.model_validate(row)``) so that the renderers use attributes, not string keys. The JSON is written from
plain dicts (``lab.load.summarize``), so its keys and their order stay as they were; a model ignores keys it
does not name (a precision row also carries its server, mode and answers)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Row(BaseModel):
    """Base of the rows: read-only, extra keys ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class LoadRow(Row):
    """One (variant, concurrency) measurement (``lab.load.summarize``): latencies in ms, throughput in answered
    requests per second over all rounds and per round; None where no request was answered."""

    variant: str
    concurrency: int
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None = None  # from wrk's latency distribution (bench/lab/wrk.py); older rows have none
    load: str | None = None  # who sent the timed rounds: "wrk", or "python-grpc" (bench serve's gRPC variants)
    throughput_rps: float | None
    throughput_rps_rounds: list[float]

    @property
    def answered(self) -> int:
        return self.requests - self.errors


class AnswersRow(Row):
    """Every image classified once (``lab.load.summarize_answers``): accuracy in [0, 1], GFLOPs per image as the
    service reports them (None from a server that does not say)."""

    images: int
    errors: int
    accuracy: float | None
    gflops_per_image: float | None


class TargetCheck(Row):
    """A target judged: its text, the measured ``ratio`` (or difference) and whether it was ``met``."""

    target: str
    ratio: float
    met: bool


class RatioCheck(TargetCheck):
    """A ratio target judged at one concurrency, against ``bound``."""

    concurrency: int
    bound: float


class PrecisionRow(LoadRow):
    """A ``--precisions`` measurement: a LoadRow of one (server, mode) with that server's answers to every image
    and its effective rate (GFLOP/s, a multiply-add counted as 2) and share of the CPU's peak (0..1)."""

    server: str
    mode: str
    accuracy: float | None
    gflops_per_image: float | None
    effective_gflops_s: float
    of_peak: float
