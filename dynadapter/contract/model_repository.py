"""The model repository: `MODEL_REPO/<name>/<version>/{manifest.json, segment_k.onnx}`.

One definition for both sides: the exporter writes the manifest through `Manifest` (`new_manifest`
refuses a field this schema does not know), the service reads it through the same class. The
format is documented in docs/model-repository.md (schema version 1). Anything wrong with a model
version -- a missing field, a segment whose sha256 differs from the manifest -- raises
`ModelLoadError` with one line that says what and where, and the service refuses to start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dynadapter.contract.images import Interpolation, decode_image, preprocess
from dynadapter.contract.numerics import sha256_file
from dynadapter.errors import ModelLoadError

SCHEMA_VERSION = 1
MODE_NAMES = ("fast", "balanced", "accurate")
#: Boolean scalar input of a segment whose exit head is gated: fed false, the segment skips its
#: head and returns empty logits (export/head_gate.py).
HEAD_GATE_INPUT = "need_logits"
#: Input of segment 0 (the preprocessed image batch) and of every later segment (the hidden state);
#: ONNX names are single-assignment, so a middle segment's input cannot also be called "hidden".
IMAGE_INPUT, HIDDEN_INPUT = "image", "hidden_in"
HIDDEN_OUTPUT, LOGITS_OUTPUT = "hidden", "logits"


#: A model name: one folder of the repository. ASCII letters, digits, '_', '.', '-', not starting with
#: '.' or '-' (so never '.', '..' or a hidden folder), at most 128 characters: no separator ('/',
#: '\\'), no control or non-ASCII character can pass, whatever percent-decoding made of a URL.
MODEL_NAME_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: A version: a version folder's name, ASCII decimal digits only (`str.isdigit` accepts '²' and '٣').
VERSION_RULE = re.compile(r"[0-9]{1,18}")


class InvalidModelName(ModelLoadError):
    """A model name or version that is not one folder inside the model repository (the message names
    what was given, never a server path)."""


def is_model_name(name: str) -> bool:
    return MODEL_NAME_RULE.fullmatch(name) is not None  # fullmatch: `$` would let a trailing newline in


def is_version(version: str) -> bool:
    return VERSION_RULE.fullmatch(version) is not None


def check_model_name(name: str) -> str:
    """`name` if it is a model name, else `InvalidModelName` (the rule: `MODEL_NAME_RULE`)."""
    if not is_model_name(name):
        raise InvalidModelName(
            f"{name[:140]!r} is not a model name: 1 to 128 of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return name


def check_version(version: str) -> str:
    """`version` if it is a version (ASCII decimal digits), else `InvalidModelName`."""
    if not is_version(version):
        raise InvalidModelName(f"{version[:40]!r} is not a model version: ASCII decimal digits (1, 2, ...)")
    return version


def model_path(repo: Path, name: str, version: str | None = None) -> Path:
    """`repo/name` (or `repo/name/version`), checked to be confined to the repository: the name and
    version follow their rules, and the path with every symlink followed lies inside `repo` (a model
    folder that links outside it is refused). `InvalidModelName` otherwise; the path need not exist."""
    check_model_name(name)
    path = Path(repo) / name
    if version is not None:
        path = path / check_version(version)
    root = Path(repo).resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidModelName(f"model {name!r} lies outside the model repository (a link?)")
    return path


def version_folders(repo: Path, name: str) -> list[str]:
    """The version folders of model `name` (unordered); none for a name that is no model folder."""
    folder = model_path(repo, name)
    if not folder.is_dir():
        return []
    names = [child.name for child in folder.iterdir() if is_version(child.name)]
    return [version for version in names if _confined_dir(repo, name, version)]


def model_folders(repo: Path) -> list[str]:
    """Every model folder of the repository, by name: folders whose name is a model name and that
    lie inside it (symlinks followed)."""
    if not Path(repo).is_dir():
        return []
    return sorted(
        child.name for child in Path(repo).iterdir() if is_model_name(child.name) and _confined_dir(repo, child.name)
    )


def _confined_dir(repo: Path, name: str, version: str | None = None) -> bool:
    try:
        return model_path(repo, name, version).is_dir()
    except InvalidModelName:
        return False


def segment_io(k: int, last: bool) -> tuple[list[str], list[str]]:
    """(input names, output names) of segment k, before the head gate adds its flag input."""
    outputs = [LOGITS_OUTPUT] if last else [HIDDEN_OUTPUT, LOGITS_OUTPUT]
    return [IMAGE_INPUT if k == 0 else HIDDEN_INPUT], outputs


class _Schema(BaseModel):
    # Unknown keys are allowed so that a newer exporter's extra fields do not break serving.
    model_config = ConfigDict(extra="allow", frozen=True)


class Preprocessing(_Schema):
    """What a segment-0 input is: an RGB image resized to `size`, scaled to [0, 1], normalised.

    Training, calibration and serving all call it (`preprocessing(image)`), so they see identical
    tensors.
    """

    size: tuple[int, int] = Field(description="(height, width)")
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bicubic"
    color: Literal["RGB"] = "RGB"

    @classmethod
    def square(
        cls, size: int, mean: Sequence[float], std: Sequence[float], interpolation: Interpolation = "bicubic"
    ) -> Preprocessing:
        return cls(size=(size, size), mean=tuple(mean), std=tuple(std), interpolation=interpolation)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """float32 [3, H, W] for one decoded image."""
        return preprocess(image, self.size, self.mean, self.std, self.interpolation)

    def load(self, data: bytes, max_pixels: int, *, reduced: bool = True) -> np.ndarray:
        """Encoded image bytes -> the float32 [3, H, W] input of segment 0: the one path from a file
        to a model input, for training, evaluation, calibration and serving alike.

        `reduced` (the default) lets the decoder work at reduced scale (JPEG in the DCT domain,
        other formats box-reduced on load) down to three times `size`; False decodes at full resolution,
        the reference that reduced decoding stays within a documented tolerance of (docs/images.md).

        Raises `ImageDecodeError` (empty, corrupt, unsupported) and `ImageTooLargeError` (over
        `max_pixels`), as `decode_image` does.
        """
        return self(decode_image(data, max_pixels, self.size if reduced else None))

    @field_validator("size")
    @classmethod
    def _positive(cls, size: tuple[int, int]) -> tuple[int, int]:
        if min(size) < 1:
            raise ValueError("must be positive")
        return size

    @field_validator("std")
    @classmethod
    def _nonzero(cls, std: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(value == 0 for value in std):
            raise ValueError("must not contain 0")
        return std


class Segment(_Schema):
    index: int = Field(ge=0)
    file: str = Field(pattern=r"^[\w.-]+\.onnx$")  # a plain file name: nothing outside the folder
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    after_block: int = Field(ge=1)
    gflops: float = Field(ge=0)
    cumulative_gflops: float = Field(ge=0)
    # The exit head's share of `gflops`: what an image saves where the segment skips its gated head.
    head_gflops: float = Field(default=0.0, ge=0)


class ThresholdSpread(_Schema):
    """How a mode's threshold and validation accuracy vary over bootstrap resamples of the validation
    split (docs/model-repository.md, "Calibration"). Thresholds in [0, 1], accuracies as fractions;
    ``_low``/``_high``: 5th/95th percentile over the resamples, ``_std``: their sample std."""

    single_threshold: float = Field(ge=0, le=1, description="the choice on the whole split, without resampling")
    threshold_low: float = Field(ge=0, le=1)
    threshold_high: float = Field(ge=0, le=1)
    threshold_std: float = Field(ge=0)
    accuracy_low: float = Field(description="the mode's threshold's accuracy over the resamples")
    accuracy_high: float
    accuracy_std: float = Field(ge=0)
    oob_accuracy: float | None = Field(
        None, description="each resample's choice's accuracy on the images it left out, averaged"
    )


class ThresholdChoice(_Schema):
    """A calibrated operating point: a scalar threshold, optionally a per-exit vector that wins, and
    (optional, calibrated by bootstrap) the spread of its threshold and accuracy."""

    threshold: float = Field(ge=0, le=1)
    thresholds: tuple[float, ...] | None = None
    accuracy: float
    flops_fraction: float
    spread: ThresholdSpread | None = None
    # Where corrupted copies joined the calibration set: the accuracy on the clean val images / the copies alone.
    val_accuracy: float | None = None
    corrupted_accuracy: float | None = None

    @field_validator("thresholds")
    @classmethod
    def _in_range(cls, values: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if values is not None and any(not 0 <= value <= 1 for value in values):
            raise ValueError("every threshold must be in [0, 1]")
        return values


class BudgetChoice(ThresholdChoice):
    budget: float = Field(gt=0, le=1)


class Calibration(_Schema):
    split: str
    num_samples: int = Field(ge=0)
    table: list[dict[str, object]]
    budgets: list[BudgetChoice]
    # Bootstrap resamples of the split behind the modes and their seed; absent: one choice on the split.
    resamples: int | None = Field(None, ge=1)
    resample_seed: int | None = None
    # Corrupted copies of every val image after the val images in the set (``--calibration-corrupted``),
    # their severities, and how many val images the set begins with; absent: the val images alone.
    corrupted_copies: int | None = Field(None, ge=1)
    corrupted_severities: list[int] | None = None
    val_samples: int | None = Field(None, ge=0)


PRECISIONS = ("fp32", "int8")
#: Runtimes a precision can be written for: "onnx" (the segments above, any ONNX runtime) or
#: "openvino" (OpenVINO IR: `segment_k.<precision>.xml` + `.bin`).
Runtime = Literal["onnx", "openvino"]


class PrecisionSegment(_Schema):
    """One segment of an additional precision: its graph file and, for OpenVINO IR, its weights."""

    index: int = Field(ge=0)
    file: str = Field(pattern=r"^[\w.-]+\.(onnx|xml)$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    weights: str | None = Field(default=None, pattern=r"^[\w.-]+\.bin$")
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")


class PrecisionExport(_Schema):
    """The same model at another precision or for another runtime (docs/model-repository.md,
    "Precisions"). It has its own files, its own parity against PyTorch and its own calibration and
    modes, computed from its own logits on the validation split: thresholds chosen on fp32 logits are
    not reused for int8 logits. FLOPs stay the model's multiply-adds (`segments`), whatever the
    precision."""

    precision: Literal["fp32", "int8"]
    runtime: Runtime
    segments: list[PrecisionSegment] = Field(min_length=1)
    calibration: Calibration
    modes: dict[str, ThresholdChoice]
    # max |logits - PyTorch| over every exit, argmax agreement with PyTorch, the tolerance applied.
    parity: dict[str, object]
    # How int8 weights and activations were quantized, and on which images (the calibration set).
    quantization: dict[str, object] | None = None

    @field_validator("modes")
    @classmethod
    def _all_modes(cls, modes: dict[str, ThresholdChoice]) -> dict[str, ThresholdChoice]:
        return _check_modes(modes)


class Manifest(_Schema):
    schema_version: int
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created_utc: str
    labels: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    hidden_shape: tuple[int, ...]
    segments: list[Segment] = Field(min_length=1)
    gflops_full: float = Field(gt=0)
    calibration: Calibration
    modes: dict[str, ThresholdChoice]
    parity: dict[str, object]
    # What the model was trained from (backbone, PETL method, resolution, exits, data): provenance.
    training: dict[str, object] | None = None
    # Further precisions/runtimes of the same segments, keyed "<precision>-<runtime>" (e.g.
    # "int8-openvino"); the fields above describe the portable fp32 ONNX segments ("fp32-onnx").
    precisions: dict[str, PrecisionExport] | None = None

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {version} (this service reads {SCHEMA_VERSION})")
        return version

    @field_validator("modes")
    @classmethod
    def _all_modes(cls, modes: dict[str, ThresholdChoice]) -> dict[str, ThresholdChoice]:
        return _check_modes(modes)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if [segment.index for segment in self.segments] != list(range(len(self.segments))):
            raise ValueError("segments must be listed in order with index 0..K-1")
        if any(segment.head_gflops > segment.gflops for segment in self.segments):
            raise ValueError("a segment's head_gflops cannot exceed its gflops")
        for modes, calibration in [(self.modes, self.calibration)] + [
            (p.modes, p.calibration) for p in (self.precisions or {}).values()
        ]:
            vectors = [choice.thresholds for choice in [*modes.values(), *calibration.budgets]]
            if any(vector is not None and len(vector) != self.num_exits - 1 for vector in vectors):
                raise ValueError(f"a per-exit threshold vector must have {self.num_exits - 1} values (K-1)")
        for key, export in (self.precisions or {}).items():
            if [segment.index for segment in export.segments] != list(range(self.num_exits)):
                raise ValueError(f"precisions.{key}: segments must be listed in order with index 0..K-1")
            if key != precision_key(export.precision, export.runtime):
                raise ValueError(
                    f"precisions.{key}: the key must be {precision_key(export.precision, export.runtime)!r}"
                )
        return self

    @property
    def precision_keys(self) -> list[str]:
        """Every precision this version can be served at: "fp32-onnx" first, then the others."""
        return [FP32_ONNX, *(self.precisions or {})]

    def at_precision(self, key: str) -> Manifest:
        """This manifest as served at precision ``key``: its segment files, parity, calibration and
        modes replace the fp32 ONNX ones (FLOPs and everything else stay). ``ModelLoadError`` for a
        precision this version does not have."""
        if key == FP32_ONNX:
            return self
        export = (self.precisions or {}).get(key)
        if export is None:
            raise ModelLoadError(
                f"model {self.name!r} version {self.version} has no {key} segments "
                f"(it has {', '.join(self.precision_keys)}); export them with dynadapter export --precision"
            )
        segments = [
            segment.model_copy(update={"file": variant.file, "sha256": variant.sha256})
            for segment, variant in zip(self.segments, export.segments, strict=True)
        ]
        return self.model_copy(
            update={
                "segments": segments,
                "calibration": export.calibration,
                "modes": export.modes,
                "parity": export.parity,
            }
        )

    @property
    def num_exits(self) -> int:
        return len(self.segments)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def used_gflops(self, exit_index: int, skipped_heads: Sequence[int] = ()) -> float:
        """What an image leaving at `exit_index` cost: every segment up to there, less the exit heads
        the segment runner skipped on its way (no image in its batch could leave at those)."""
        skipped = sum(self.segments[k].head_gflops for k in skipped_heads)
        return self.segments[exit_index].cumulative_gflops - skipped


FP32_ONNX = "fp32-onnx"


def precision_key(precision: str, runtime: str) -> str:
    return f"{precision}-{runtime}"


def _check_modes(modes: dict[str, ThresholdChoice]) -> dict[str, ThresholdChoice]:
    missing = [name for name in MODE_NAMES if name not in modes]
    if missing:
        raise ValueError(f"missing mode(s) {', '.join(missing)}")
    return modes


def new_manifest(**fields: Any) -> Manifest:
    """A manifest to write: validated as the reader validates it, and refused if it carries a field
    this schema does not know (the reader tolerates those from newer exporters; a writer must not
    produce them)."""
    manifest = Manifest(**fields)
    unknown = _unknown_fields(manifest, "manifest")
    if unknown:
        raise ValueError(f"fields the manifest schema does not define: {', '.join(unknown)}")
    return manifest


def _unknown_fields(model: BaseModel, where: str) -> list[str]:
    found = [f"{where}.{key}" for key in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        children = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, list)
            else [(None, value)]
        )
        for key, child in children:
            if isinstance(child, BaseModel):
                found += _unknown_fields(child, f"{where}.{name}" + ("" if key is None else f".{key}"))
    return found


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    path = Path(folder) / "manifest.json"
    path.write_text(manifest.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class ModelVersion:
    """A validated model version on disk, at one precision (`manifest` is `Manifest.at_precision`'s view)."""

    path: Path
    manifest: Manifest
    precision: str = FP32_ONNX

    @property
    def segment_paths(self) -> list[Path]:
        return [self.path / segment.file for segment in self.manifest.segments]


def load_model(
    repo: Path, name: str | None = None, version: str | None = None, precision: str = FP32_ONNX
) -> ModelVersion:
    """Find, parse and verify a model version (default: the only model, its highest numeric version)
    at ``precision`` (a key of `Manifest.precision_keys`; default the fp32 ONNX segments). Only the
    files of that precision are read and checked."""
    folder = _model_folder(Path(repo), name, version)
    manifest = read_manifest(_confined_file(repo, folder / "manifest.json")).at_precision(precision)
    for segment in manifest.segments:
        _check_sha256(_confined_file(repo, folder / segment.file), segment.sha256)
    export = (manifest.precisions or {}).get(precision)
    for variant in export.segments if export is not None else ():
        if variant.weights is not None:
            _check_sha256(_confined_file(repo, folder / variant.weights), variant.weights_sha256 or "")
    return ModelVersion(folder, manifest, precision)


def version_identity(folder: Path) -> tuple[tuple[str, int, int, int, int], ...]:
    """What a version folder holds now, cheaply: (name, device, inode, size, mtime ns) of each file.
    Rewriting a file in place or replacing it (`dynadapter export --overwrite`) changes it; a load
    compares it with the identity of the version it serves to decide whether to reopen it."""
    entries = []
    for child in sorted(Path(folder).iterdir()):
        info = child.stat()  # follows links: a replaced link target counts as a change
        entries.append((child.name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(entries)


def _confined_file(repo: Path, path: Path) -> Path:
    """`path`, if it lies inside the repository with links followed; `ModelLoadError` otherwise."""
    if not path.resolve().is_relative_to(Path(repo).resolve()):
        raise ModelLoadError(f"{path}: links outside the model repository")
    return path


def model_precisions(repo: Path, name: str | None = None, version: str | None = None) -> list[str]:
    """The precision keys a model version offers (its manifest read, no file checked)."""
    return read_manifest(_model_folder(Path(repo), name, version) / "manifest.json").precision_keys


def read_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ModelLoadError(f"{path}: no manifest.json") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable manifest: {err}") from err
    try:
        return Manifest.model_validate(raw)
    except ValidationError as err:
        raise ModelLoadError(f"{path}: invalid manifest: {_first_problem(err)}") from err


def _first_problem(err: ValidationError) -> str:
    first, *rest = err.errors()
    where = ".".join(str(item) for item in first["loc"]) or "manifest"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(rest)} more problem(s))" if rest else ""
    return f"{where}: {message}{more}"


def _model_folder(repo: Path, name: str | None, version: str | None) -> Path:
    if not repo.is_dir():
        raise ModelLoadError(f"model repository {repo} does not exist or is not a directory")
    if name is None:
        names = model_folders(repo)
        if not names:
            raise ModelLoadError(f"model repository {repo} holds no model")
        name = names[0]
    model_dir = model_path(repo, name)  # confined: `InvalidModelName` for '..', a link outside, ...
    if not model_dir.is_dir():
        raise ModelLoadError(f"model {name!r} not found in {repo}")
    if version is None:
        numeric = version_folders(repo, name)
        if not numeric:
            raise ModelLoadError(f"model {name!r} in {repo} has no numeric version folder")
        version = max(numeric, key=int)
    folder = model_path(repo, name, version)
    if not folder.is_dir():
        raise ModelLoadError(f"version {version!r} of model {name!r} not found in {repo}")
    return folder


def _check_sha256(path: Path, expected: str) -> None:
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read segment: {err.strerror or err}") from err
    if actual != expected.lower():
        raise ModelLoadError(
            f"{path}: sha256 mismatch (manifest {expected.lower()[:12]}..., file {actual[:12]}...); "
            "the model repository is corrupt or was changed after export"
        )
