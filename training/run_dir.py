"""The run directory: config.json, checkpoint.safetensors, metrics.jsonl, calibration.json, the
split files (split_<split>.csv), skipped.csv, LP-FT's and WiSE-FT's records (probe_init.json and
.safetensors, wise_ft.json) and, until the run finishes, the state to resume from.

This module is the only one that reads or writes those files (README "Command line" describes
them). ``config.json`` holds everything needed to rebuild the model around its frozen backbone; the
checkpoint holds only what training changed (PETL and head parameters). No pickle: JSON and
safetensors only. `RunConfig` is config.json's schema: `write_config` and `read_config` its only
writer and reader.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from dynadapter.contract import Preprocessing
from dynadapter.errors import RunDirError
from dynadapter.models.dynamic_vit import DynamicViT, DynamicViTConfig, ForwardSparsity
from dynadapter.training.adaptive_prioritization import AdaptivePrioritization
from dynadapter.training.backbones import create_backbone, load_timm_weights
from dynadapter.training.backward_sparsity import BackwardSparsity
from dynadapter.training.options import TrainOptions, with_predating

CONFIG, CHECKPOINT, METRICS, CALIBRATION = "config.json", "checkpoint.safetensors", "metrics.jsonl", "calibration.json"
#: The version of config.json this code writes and the newest it reads. 2: ``model`` and ``train`` are typed
#: (`DynamicViTConfig`, `TrainOptions`); version 1 files are migrated when read (`migrate_v1`).
RUN_CONFIG_VERSION = 2

#: Version 1's grouped training options (``{"prioritization": {"gamma": ...}, ...}``, written before the options
#: were flat) -> the `TrainOptions` field that replaced each.
V1_GROUPED_OPTIONS: dict[tuple[str, str], str] = {
    ("prioritization", "gamma"): "loss_gamma",
    ("prioritization", "distill_weight"): "distill",
    ("forward_sparsity", "shallow"): "forward_sparsity",
    ("backward_sparsity", "rate"): "backward_sparsity",
}
#: Version 1's grouped options that are no longer options: the value today's trainer always uses. A recorded
#: value equal to it is dropped (the run is what a re-run does); another is kept in ``obsolete_train``.
V1_FIXED_OPTIONS: dict[tuple[str, str], Any] = {
    ("prioritization", "temperature"): AdaptivePrioritization.temperature,
    ("forward_sparsity", "deep"): ForwardSparsity.deep,  # the model's record (``model.forward_sparsity``) keeps it
    ("backward_sparsity", "rescale"): BackwardSparsity.rescale,
}

log = logging.getLogger(__name__)


@dataclass
class BackboneSpec:
    """Args:
    name: ``builtin:<name>`` or a timm model name.
    weights: local safetensors with timm key names, or None.
    pretrained: timm's own pretrained weights (needs a model hub).
    kwargs: extra ``timm.create_model`` arguments (tests build tiny ViTs this way).
    init_seed: seed of the random initialisation when no weights are loaded, so the same frozen
        random backbone is rebuilt at export.
    """

    name: str
    img_size: int
    weights: str | None = None
    pretrained: bool = False
    kwargs: dict[str, Any] | None = None
    init_seed: int = 0

    def build(self) -> VisionTransformer:
        torch.manual_seed(self.init_seed)
        weights = Path(self.weights) if self.weights else None
        if not self.kwargs:
            return create_backbone(self.name, self.img_size, weights, self.pretrained)
        model = timm.create_model(
            self.name, pretrained=self.pretrained, num_classes=0, exportable=True, img_size=self.img_size, **self.kwargs
        )
        if weights is not None:
            load_timm_weights(model, weights)
        return model


class RunConfig(BaseModel):
    """config.json: what rebuilds a run's model and what it was trained on (README "Command line").

    ``version`` is the file's schema version (`RUN_CONFIG_VERSION`); files written before it was named
    carry it as ``format``. ``model`` rebuilds the model around the backbone; ``train`` holds the options the
    run was trained with (options a run did not record read as today's defaults, as ``--resume`` takes them,
    except those added since whose default changed: they read as they were before, `options.PREDATING`).
    Older versions are migrated when read (`migrate_v1`); ``obsolete_train`` keeps, as recorded, the options an
    older dynadapter had that this one has no counterpart for (not applied by ``--resume``). Unknown keys, a
    newer version or a field of the wrong type are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(RUN_CONFIG_VERSION, validation_alias=AliasChoices("version", "format"))
    data: str
    labels: list[str]
    preprocessing: Preprocessing
    backbone: BackboneSpec
    model: DynamicViTConfig
    train: TrainOptions
    obsolete_train: dict[str, Any] = {}
    data_summary: dict[str, Any] | None = None  # images per class and split (training/data/sources.py summary)
    world_size: int = 1
    device: str | None = None
    device_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("version", data.get("format")) == 1:
            data = migrate_v1(data)
        if isinstance(data, dict) and isinstance(data.get("train"), dict):
            data = {**data, "train": with_predating(data["train"])}  # what a run ran with, not today's default
        return data

    @field_validator("version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if not 1 <= version <= RUN_CONFIG_VERSION:
            raise ValueError(
                f"version {version} is not one this dynadapter reads (1 to {RUN_CONFIG_VERSION}): upgrade dynadapter"
            )
        return version


def migrate_v1(recorded: dict[str, Any]) -> dict[str, Any]:
    """A version 1 config.json as version 2: ``train``'s grouped options flattened to today's `TrainOptions`
    fields (`V1_GROUPED_OPTIONS`); grouped knobs fixed since (`V1_FIXED_OPTIONS`) dropped where they hold
    today's value; every other option `TrainOptions` does not know moved to ``obsolete_train`` (a grouped one
    as ``group.key``). ``model`` reads as it was (`DynamicViTConfig` has every field it had)."""
    migrated = {k: v for k, v in recorded.items() if k not in ("format", "version")}
    train, obsolete = {}, dict(recorded.get("obsolete_train", {}))
    for name, value in dict(recorded.get("train", {})).items():
        if isinstance(value, dict) and any(group == name for group, _ in V1_GROUPED_OPTIONS):
            for key, item in value.items():
                if (name, key) in V1_GROUPED_OPTIONS:
                    train[V1_GROUPED_OPTIONS[name, key]] = item
                elif (name, key) not in V1_FIXED_OPTIONS or V1_FIXED_OPTIONS[name, key] != item:
                    obsolete[f"{name}.{key}"] = item
        elif name in TrainOptions.model_fields:
            train[name] = value
        else:
            obsolete[name] = value
    return migrated | {"version": RUN_CONFIG_VERSION, "train": train, "obsolete_train": obsolete}


@dataclass
class Run:
    model: DynamicViT
    config: RunConfig
    labels: list[str]
    preprocessing: Preprocessing
    path: Path | None = None  # the run directory it was loaded from


def build_model(backbone: BackboneSpec, model_config: DynamicViTConfig) -> DynamicViT:
    return DynamicViT(backbone.build(), model_config)


def write_config(run_dir: Path, config: RunConfig) -> None:
    """``run_dir/config.json`` from ``config`` (the folder is made if needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(config.model_dump_json(indent=2), encoding="utf-8")  # labels may be any text


def read_config(run_dir: Path) -> RunConfig:
    """config.json of a run directory, an older version migrated (`migrate_v1`; a warning names the options
    kept in ``obsolete_train``); RunDirError (one line) if it is missing, of a newer version, or holds a
    field that does not fit `RunConfig`."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory (needs {CONFIG} and {CHECKPOINT})")
    try:
        config = RunConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the file)"
        raise RunDirError(f"{path}: {where}: {first['msg']}") from None
    if config.obsolete_train:
        log.warning(
            "%s records training options this dynadapter no longer has (kept, not applied): %s",
            path,
            ", ".join(f"{k}={v!r}" for k, v in config.obsolete_train.items()),
        )
    return config


def save_checkpoint(run_dir: Path, model: DynamicViT) -> None:
    write_checkpoint(run_dir, model.trainable_state_dict())


def write_checkpoint(run_dir: Path, state: dict[str, torch.Tensor]) -> None:
    save_file(state, str(Path(run_dir) / CHECKPOINT))


def read_checkpoint(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_path(run_dir)))


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def clear_earlier_run(run_dir: Path) -> bool:
    """Remove what an earlier run in ``run_dir`` produced (metrics, checkpoint, calibration, the LP-FT and
    WiSE-FT records, the eval reports and plots: ``eval_<split>`` and ``eval_<split>@<data>``,
    `eval_report_name`), so that a new run there mixes nothing of it; config.json and the split files are
    rewritten by the new run. Returns whether ``run_dir`` held a run."""
    run_dir = Path(run_dir)
    held = (run_dir / CONFIG).is_file()
    for name in (METRICS, CHECKPOINT, CALIBRATION, PROBE_INIT, PROBE_INIT_STATE, WISE_FT):
        (run_dir / name).unlink(missing_ok=True)
    for report in [*run_dir.glob("eval_*.json"), *run_dir.glob("eval_*.png")]:  # every eval_report_name
        report.unlink()
    return held


def eval_report_name(split: str, other_data: str | None = None) -> str:
    """The stem of an eval report and its plot (``.json``, ``.png``): ``eval_<split>`` on the run's own data,
    ``eval_<split>@<data_slug(other_data)>`` on other data, so that evaluating elsewhere writes beside the
    run's own report instead of over it."""
    return f"eval_{split}" if other_data is None else f"eval_{split}@{data_slug(other_data)}"


def data_slug(data: str) -> str:
    """A file-name-safe name of a data set: ``builtin:mnist`` -> ``builtin-mnist``; a folder or CSV manifest ->
    its name and the first 8 hex digits of the sha256 of its absolute path (``photos-1a2b3c4d``,
    ``list.csv-...``), so two folders of one name do not share a report. Only ``[A-Za-z0-9._-]``."""
    if data.startswith("builtin:"):
        return _safe(data.replace(":", "-", 1))
    path = Path(data).expanduser().resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return f"{_safe(path.name)[:40] or 'data'}-{digest}"


def _safe(name: str) -> str:
    # one dash for every run of other characters; no leading dot (a hidden file) or dash (read as a flag)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip(".-")


def truncate_metrics(run_dir: Path, epochs: int) -> None:
    """Keep the records of the first ``epochs`` epochs (a resumed run redoes the ones after)."""
    path = Path(run_dir) / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    path.write_text("".join(line + "\n" for line in lines if json.loads(line)["epoch"] <= epochs))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS).open("a") as f:
        f.write(json.dumps(record) + "\n")


def has_calibration(run_dir: Path) -> bool:
    return (Path(run_dir) / CALIBRATION).is_file()


def read_calibration(run_dir: Path) -> dict[str, Any]:
    """calibration.json: the manifest's ``calibration`` table and ``modes``."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        raise RunDirError(f"{path} is missing: train with a non-empty val split to calibrate")
    return json.loads(path.read_text())


def write_calibration(run_dir: Path, calibration: dict[str, Any]) -> None:
    (Path(run_dir) / CALIBRATION).write_text(json.dumps(calibration, indent=2))


def write_report(run_dir: Path, name: str, report: dict[str, Any]) -> Path:
    """A JSON report beside the run's files (``<eval_report_name(...)>.json``); returns its path."""
    path = Path(run_dir) / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def load_run(run_dir: Path) -> Run:
    """Rebuild the trained model (eval mode) from a run directory."""
    run_dir = Path(run_dir)
    if not checkpoint_path(run_dir).is_file():
        raise RunDirError(f"{run_dir} is not a run directory (needs {CONFIG} and {CHECKPOINT})")
    config = read_config(run_dir)
    model = build_model(config.backbone, config.model)
    model.load_trainable_state_dict(read_checkpoint(run_dir))
    return Run(model.eval(), config, config.labels, config.preprocessing, run_dir)


#: LP-FT's probes (per head C and val accuracy) and the trainable state they start from (WiSE-FT's anchor);
#: WiSE-FT's choice of the interpolation (every alpha's validation objective, the one kept).
PROBE_INIT, PROBE_INIT_STATE, WISE_FT = "probe_init.json", "probe_init.safetensors", "wise_ft.json"


def write_probe_init(run_dir: Path, fits: list[dict[str, Any]], state: dict[str, torch.Tensor]) -> None:
    """``probe_init.json`` (``{"heads": [{"C", "val_acc"}, ...]}``) and ``probe_init.safetensors``."""
    (Path(run_dir) / PROBE_INIT).write_text(json.dumps({"heads": fits}, indent=2))
    save_file(state, str(Path(run_dir) / PROBE_INIT_STATE))


def read_probe_init_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The probe-initialised trainable state; RunDirError if the run was not probe-initialised."""
    path = Path(run_dir) / PROBE_INIT_STATE
    if not path.is_file():
        raise RunDirError(f"{path} is missing: WiSE-FT interpolates toward the probe of --head-init probe")
    return load_file(str(path))


def write_wise_ft(run_dir: Path, record: dict[str, Any]) -> None:
    """``wise_ft.json``: ``{"alpha": chosen, "objective": VAL_OBJECTIVE's name, "alphas": [{"alpha",
    "val_acc", "val_loss"}, ...]}`` (what `training.wise_ft.choose_alpha` returns)."""
    (Path(run_dir) / WISE_FT).write_text(json.dumps(record, indent=2))


#: Files of the split a run trained on (folders and manifests; builtin splits are fixed by their seed).
SPLIT_FILE, SKIPPED = "split_{}.csv", "skipped.csv"
RESUME_STATE, RESUME_META = "resume.safetensors", "resume.json"


def write_split(run_dir: Path, split: str, files: list[Path], labels: list[str]) -> None:
    """``split_<split>.csv``: ``path,label`` per image (absolute paths), the split eval and calibration reuse."""
    with (Path(run_dir) / SPLIT_FILE.format(split)).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([str(path.resolve()), label] for path, label in zip(files, labels, strict=True))


def read_split(run_dir: Path, split: str) -> list[tuple[str, str]] | None:
    """The (path, label) rows of ``split_<split>.csv``, or None where the run has no split files."""
    path = Path(run_dir) / SPLIT_FILE.format(split)
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        return [(row["path"], row["label"]) for row in csv.DictReader(f)]


def write_skipped(run_dir: Path, rows: list[tuple[str, str, str]]) -> None:
    """``skipped.csv``: ``path,split,reason`` of every file left out as unusable (header only if none)."""
    with (Path(run_dir) / SKIPPED).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "reason"])
        writer.writerows(rows)


def write_resume(run_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """What ``--resume`` needs after a finished epoch: tensors (weights, optimizer, generators) and JSON.
    Written to a temporary name first, so an interruption while writing keeps the previous epoch's."""
    run_dir = Path(run_dir)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(run_dir / (RESUME_STATE + ".tmp")))
    (run_dir / (RESUME_META + ".tmp")).write_text(json.dumps(meta, indent=2))
    (run_dir / (RESUME_STATE + ".tmp")).replace(run_dir / RESUME_STATE)
    (run_dir / (RESUME_META + ".tmp")).replace(run_dir / RESUME_META)


def read_resume(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state ``write_resume`` left; RunDirError if there is none (a finished or never-started run)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESUME_META).is_file():
        raise RunDirError(
            f"{run_dir} has nothing to resume (no {RESUME_META}: the run finished or never ended an epoch)"
        )
    return load_file(str(run_dir / RESUME_STATE)), json.loads((run_dir / RESUME_META).read_text())


def remove_resume(run_dir: Path) -> None:
    for name in (RESUME_STATE, RESUME_META):
        (Path(run_dir) / name).unlink(missing_ok=True)
