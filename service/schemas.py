"""Response bodies of the HTTP API (README, "Serving"; OpenAPI at /docs)."""

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class Knob(BaseModel):
    """The per-request quality knob: at most one of threshold, mode and budget. None, or mode=auto: the
    service's choice (`balanced`, or the latency controller's operating point under target_p95_ms)."""

    threshold: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    mode: Literal["fast", "balanced", "accurate", "auto"] | None = None
    budget: float | None = Field(
        default=None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Fraction of the full model's FLOPs, on average: the most accurate calibrated threshold whose "
        "mean FLOPs over the validation split is within it. Not a cap per image: a hard image goes deeper.",
    )

    @model_validator(mode="after")
    def _one_knob(self) -> "Knob":
        if sum(knob is not None for knob in (self.threshold, self.mode, self.budget)) > 1:
            raise ValueError("give at most one of threshold, mode and budget")
        return self


class ClassScore(BaseModel):
    label: str
    class_id: int
    confidence: float


class ExitTaken(BaseModel):
    index: int  # 0-based exit that answered
    count: int  # number of exits of the model
    after_block: int  # the exit sits after this many transformer blocks


class GFlops(BaseModel):
    used: float
    full: float
    saved: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    label: str
    class_id: int
    confidence: float
    top_k: list[ClassScore]
    exit: ExitTaken
    gflops: GFlops
    threshold: float | list[float]  # the scalar used, or the calibrated (or live) per-exit vector
    exit_reason: Literal["confident", "deadline", "last"]  # why the image left at that exit
    latency_ms: float


class ExitInfo(BaseModel):
    index: int
    after_block: int
    gflops: float  # this segment alone, exit head included
    cumulative_gflops: float  # what an image leaving here has cost, every earlier head run
    head_gflops: float  # the exit head's share of `gflops`; skipped where no image can leave here


class ModeInfo(BaseModel):
    threshold: float
    thresholds: list[float] | None = None  # per-exit vector; wins over `threshold` when present
    accuracy: float
    flops_fraction: float
    live_thresholds: list[float] | None = None  # per early exit, re-chosen on live traffic (live_calibration)


class ServingInfo(BaseModel):
    backend: str  # onnxruntime or openvino
    precision: str  # a key of the manifest's precisions: fp32-onnx, fp32-openvino, int8-openvino
    device: str  # cpu or cuda


class ModelInfo(BaseModel):
    name: str
    version: str
    num_classes: int
    labels: list[str]
    exits: list[ExitInfo]
    gflops_full: float
    modes: dict[str, ModeInfo]
    providers: list[str]
    memory_bytes: int  # resident memory the process grew by while loading this version
    serving: ServingInfo | None = None  # which backend and precision answer (settings backend, precision)


class ModelList(BaseModel):
    models: list[ModelInfo]


class Status(BaseModel):
    status: str
