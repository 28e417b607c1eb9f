"""`TrainOptions`: every option of a training run, defined once.

`dynadapter train`'s flags are generated from these fields (dynadapter/options.py: the field
description is the help, the validation is the flag's), the benchmarks read their recipe from the
defaults here, and the run directory records the values used. Torch-free, so that the command line
builds its parser without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from dynadapter.options import comma_separated


def _extra(**extra: Any) -> dict[str, Any]:
    return {"json_schema_extra": extra}


#: The first part of an ``--auto-augment`` spec: timm's RandAugment (``rand-m9-mstd0.5``), AugMix
#: (``augmix-m5``) and AutoAugment policies (``original``, ``v0``, ...), or torchvision's TrivialAugmentWide.
AUTO_AUGMENT_KINDS = ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a", "trivial")


def _crop_scale(scale: list[float] | None) -> list[float] | None:
    if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"expected MIN,MAX with 0 < MIN <= MAX <= 1, got {scale}")
    return scale


def _auto_augment(spec: str | None) -> str | None:
    if spec in (None, "", "none"):
        return None
    kind = spec.split("-")[0]
    if kind not in AUTO_AUGMENT_KINDS or (kind == "trivial" and spec != "trivial"):
        raise ValueError(f"{spec!r}: expected a spec starting with one of {', '.join(AUTO_AUGMENT_KINDS)}")
    return spec


#: Options added after runs were first recorded, with the value every run had before the option existed: a
#: recorded run (config.json, a benchmark cell) that lacks one ran with this value, whatever the default is
#: now (`with_predating`), so that changing a default never changes what an earlier run is said to be.
PREDATING: dict[str, Any] = {"head_init": "random", "wise_ft": False, "calibration_corrupted": 0}


def with_predating(recorded: dict[str, Any]) -> dict[str, Any]:
    """Recorded training options, each option of `PREDATING` that they lack filled in with its value before
    it existed."""
    return {**{k: v for k, v in PREDATING.items() if k not in recorded}, **recorded}


def default_exits(depth: int, stages: int = 4) -> list[int]:
    """``--exits``' default: after every ``depth / stages`` blocks (3, 6, 9, 12 for a 12-block ViT)."""
    return sorted({max(1, round(depth * (k + 1) / stages)) for k in range(stages)})


class TrainOptions(BaseModel):
    """A training run; see `dynadapter train --help`. `exits` None = every quarter of the depth."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str = Field(
        description="image folder (DATA/<class>/..., or DATA/{train,val,test}/<class>/...), "
        "a CSV manifest (path,label[,split]) or builtin:<name>"
    )
    out: Path = Field(description="run directory to write")
    resume: Path | None = Field(
        None, description="continue the interrupted run in this run directory, with the options it recorded"
    )
    val_size: float = Field(
        0.15, ge=0, description="val images held out where DATA has no val/: a fraction (<1, at most 5000) or a count"
    )
    test_size: float = Field(
        0.15, ge=0, description="test images held out where DATA has no test/ (nor val/): a fraction or a count"
    )
    shots: int | None = Field(
        None,
        ge=1,
        description="few-shot: K training images per class, drawn with --seed from the train split (default: all)",
    )
    bad_images: Literal["skip", "error"] = Field(
        "skip",
        description="unreadable or non-image files: skip (listed in skipped.csv) or error (stop before training)",
    )
    workers: int = Field(2, ge=0, description="DataLoader worker processes that decode images (0 = none)")
    cache: Literal["auto", "memory", "disk"] = Field(
        "auto", description="where resized uint8 images are kept after the first decode (auto: memory when it fits)"
    )
    cache_memory_mb: int = Field(4096, ge=0, description="largest in-memory image cache with --cache auto, in MiB")
    max_pixels: int = Field(40_000_000, gt=0, description="largest image read, in pixels (the service's default limit)")
    val_every: int = Field(
        1, ge=1, description="validate (and keep the best checkpoint) every N epochs and after the last one"
    )
    keep: Literal["best", "last"] = Field(
        "best", description="checkpoint kept: best validation objective (mean exit accuracy, then loss) or last epoch"
    )
    backbone: str = Field("builtin:dinov2-s14", description="timm ViT name or builtin:<name>")
    backbone_weights: str | None = Field(None, description="local safetensors file with timm key names")
    pretrained: bool = Field(
        False, description="timm's own pretrained weights for a timm model name (needs a reachable model hub)"
    )
    backbone_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra timm.create_model argument (repeatable), e.g. depth=4",
        **_extra(flag="--backbone-arg", key_values=True),
    )
    petl: Literal["adapter", "lora", "repadapter", "none"] = Field(
        "adapter", description="PETL method (none = heads on the frozen backbone)"
    )
    petl_options: dict[str, Any] = Field(
        default_factory=dict,
        description="PETL config option (repeatable), e.g. dim=8 or scale=0.5",
        **_extra(flag="--petl-arg", key_values=True),
    )
    exits: Annotated[list[Annotated[int, Field(ge=1)]] | None, BeforeValidator(comma_separated)] = Field(
        None, description="comma-separated blocks after which exits sit (default: every quarter of the depth)"
    )
    heads: str = Field(
        "balanced", description="balanced | linear | one kind[:n] per exit, e.g. transformer:1,mlp:2,mlp:1,linear"
    )
    static: bool = Field(False, description="baseline: the final exit only")
    img_size: int = Field(112, ge=1, description="input resolution in pixels (position embedding resampled)")
    epochs: int = Field(10, ge=1, description="training epochs")
    batch_size: int = Field(32, ge=1, description="global batch size")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up before the cosine decay, in epochs")
    seed: int = Field(0, description="seed of the split, the initialisation, the shuffles and the masks")
    loss_gamma: float = Field(2.0, ge=0, description="adaptive prioritization strength (0 = fixed equal exit weights)")
    distill: float = Field(0.0, ge=0, description="self-distillation weight (0 = off)")
    forward_sparsity: float = Field(0.2, ge=0, lt=1, description="dropout of the shallowest stage (0 = off)")
    backward_sparsity: float = Field(
        0.1, ge=0, lt=1, description="fraction of gradient entries zeroed at each step (0 = off)"
    )
    calibration_resamples: int = Field(
        200,
        ge=0,
        description="bootstrap resamples of the val split behind each mode's threshold (their median, "
        "with its spread); 0 = one choice on the split itself",
    )
    calibration_corrupted: int = Field(
        0,
        ge=0,
        description="corrupted copies of every val image that join the calibration set (each copy one kind "
        "of corruption at severity 1-2, seeded by --seed), so that thresholds hold on shifted inputs; "
        "0 = clean val only",
    )
    crop_scale: Annotated[list[float] | None, BeforeValidator(comma_separated), AfterValidator(_crop_scale)] = Field(
        None,
        description="training images only: random resized crop (timm) of MIN,MAX of the image's area, "
        "e.g. 0.35,1 (default: the whole image)",
    )
    hflip: float = Field(
        0.0,
        ge=0,
        le=1,
        description="training images only: probability of a horizontal flip (leave 0 where a mirror image "
        "changes the class, as for digits and text)",
    )
    auto_augment: Annotated[str | None, AfterValidator(_auto_augment)] = Field(
        None,
        description="training images only: timm's RandAugment / AugMix / AutoAugment spec (rand-m9-mstd0.5, "
        "augmix-m5, original) or trivial (TrivialAugmentWide) (default: none)",
    )
    mixup: float = Field(0.0, ge=0, description="mixup alpha on training batches (timm Mixup; 0 = off)")
    cutmix: float = Field(
        0.0, ge=0, description="cutmix alpha on training batches (0 = off; with --mixup, one of the two per batch)"
    )
    smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the training targets (0 = off)")
    head_dropout: float = Field(
        0.0, ge=0, lt=1, description="dropout in every exit head (forward sparsity raises it in shallow stages)"
    )
    petl_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout inside the PETL modules' branch (forward sparsity raises it in shallow stages; "
        "same as --petl-arg dropout=P)",
    )
    head_init: Literal["random", "standardised", "probe"] = Field(
        "random",
        description="exit heads' start: random; standardised (random, each linear or MLP head's norm set so that its "
        "features have mean 0 and std 1 on the train split); or probe (LP-FT, Kumar et al. ICLR 2022: each head "
        "starts as the logistic-regression probe of the frozen features, fitted on train, C chosen on val)",
    )
    wise_ft: bool = Field(
        False,
        description="WiSE-FT (Wortsman et al. CVPR 2022; needs --head-init probe): after training, keep the "
        "interpolation between the probe-initialised and the trained weights that validates best",
    )
    device: str = Field("auto", description="auto (the GPU when CUDA is usable, else the CPU), cpu, cuda or cuda:N")
    amp: bool = Field(
        False, description="mixed-precision training (autocast); calibration, checkpoint and export stay float32"
    )
    amp_dtype: Literal["bfloat16", "float16"] = Field(
        "bfloat16", description="autocast dtype with --amp (float16 adds loss scaling)"
    )
    progress: bool = Field(True, description="progress bar", **_extra(cli=False))

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or cutmix): the targets are then soft labels."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def augments(self) -> bool:
        """Whether any switch changes the training images (the other splits never change)."""
        return bool(self.crop_scale or self.hflip or self.auto_augment)

    def record(self) -> dict[str, Any]:
        """The options as JSON-ready values (for config.json and the benchmark cache)."""
        return self.model_dump(mode="json")
