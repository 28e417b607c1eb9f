"""The cells of the accuracy suite: one training run per (task, PETL method, variant, seed), cached.

A cell is a run directory ``ROOT/<task>/<petl>-<variant>[-seed<S>][-k<K>][-r<R>]/`` (what ``dynadapter
train`` writes, plus ``eval_test.json`` / ``.png`` from ``dynadapter eval``) and ``bench.json``,
written last: the cell's training options and its results. Seed 0 and all training images keep the
plain name, so caches written before seeds and shots existed are reused. A recipe given with
``--train-arg`` (augmentation, regularisation: `recipe_options`) or a learning rate other than
``dynadapter train``'s adds ``-r<R>``, a hash of the options that differ from its defaults, so that
recipes never share a cell; the default recipe keeps the plain names. A cell whose
``bench.json`` holds the same options is finished and is reused, so an interrupted suite continues
where it stopped; a cell run with other options (another ``--epochs``, say) is trained again. A
finished cell whose results lack a part added since (the shifted test split, the probe's choice of
block) gets it evaluated from its run directory, without training. Changes to the code are not
detected otherwise: after one that matters, train again into a fresh ``--root``.

The run directories (checkpoints, a few MB each) stay on the machine that trained them; each finished
cell's ``bench.json`` is also kept as a *record*, ``RECORDS/<task>/<cell>.json`` (``SuiteConfig.records``;
``bench accuracy`` keeps them under ``docs/results/cells/``, in the repository), the way asv keeps its
results beside the code. A record counts as a finished cell where its run directory is absent, so a
fresh clone re-renders the results page and a suite spread over machines or sessions adds seeds to it
instead of training again; such a cell cannot get the parts added since it ran (they stay missing,
and the log says so).

Every cell is evaluated on the test split and on its shifted copy (``CorruptedDataset``: each image
corrupted by one kind and severity of ``dynadapter.training.corruptions``, at the model's input
resolution as ImageNet-C corrupts at 224 px, seeded by the cell's seed). With ``SuiteConfig.int8``
every Dyn-Adapter cell is also served in int8 (``dynadapter.bench.suite.int8_column``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from dynadapter.bench.suite.int8_column import int8_result
from dynadapter.bench.suite.probe import fit_probe_heads
from dynadapter.bench.suite.rows import (
    Calibration,
    CellResult,
    EvalMode,
    EvalReport,
    ModeResult,
    ShiftedResult,
    StoredCell,
)
from dynadapter.contract import Preprocessing
from dynadapter.cpu import this_cpu
from dynadapter.errors import ConfigError
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops, exit_head_gflops
from dynadapter.training.calibration import sweep
from dynadapter.training.corruptions import CorruptedDataset
from dynadapter.training.data import ImageDataset, load_raw, run_split, stream
from dynadapter.training.evaluate import evaluate_run, exit_accuracies, loader_logits, split_logits
from dynadapter.training.options import TrainOptions, with_predating
from dynadapter.training.run_dir import (
    BackboneSpec,
    Run,
    has_calibration,
    load_run,
    read_calibration,
    read_config,
)
from dynadapter.training.trainer import build, train

log = logging.getLogger(__name__)
T = TypeVar("T")

BENCH_FILE = "bench.json"
#: ``static``: the PETL baseline, final head only; ``dyn``: Dyn-Adapter (exits, all parts on).
VARIANTS = ("static", "dyn")
DYN = VARIANTS[1]
#: The frozen probe: ``--petl none`` (heads on the frozen backbone) with a linear head after every
#: block; the block is chosen on the validation split. One SGD epoch (equal weights, no sparsity) lays
#: out its run directory; its heads are then fitted by logistic regression on the frozen features
#: (``frozen_probe``), which SGD in the suite's budget comes nowhere near.
PROBE_PETL, PROBE = "none", "probe"
PROBE_EPOCHS = 1
#: Validations of a few-shot cell (``--val-every``): at 1-shot an epoch is one step, and validating
#: after each would cost far more than the training.
FEWSHOT_VALIDATIONS = 8
PROBE_OPTIONS: dict[str, Any] = {
    "heads": "linear",
    "loss_gamma": 0.0,
    "forward_sparsity": 0.0,
    "backward_sparsity": 0.0,
}
#: The paper's ablation, on Dyn-Adapter with this PETL method: one part switched at a time.
ABLATION_PETL = "adapter"
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear-heads": ("balanced heads off (linear heads)", {"heads": "linear"}),
    "equal-weights": ("adaptive loss weighting off (gamma = 0)", {"loss_gamma": 0.0}),
    "no-forward-sparsity": ("forward sparsity off", {"forward_sparsity": 0.0}),
    "no-backward-sparsity": ("backward sparsity off", {"backward_sparsity": 0.0}),
    "distill": ("self-distillation on (weight 0.5)", {"distill": 0.5}),
}


#: Options that the suite sets itself, per cell or from its own flags: ``--train-arg`` cannot give them.
SUITE_OPTIONS = frozenset(
    {"data", "out", "resume", "petl", "static", "exits", "seed", "shots", "epochs", "lr", "warmup_epochs"}
    | {"batch_size", "amp", "img_size", "backbone", "backbone_kwargs", "workers", "val_every", "progress"}
)


def recipe_options(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``--train-arg KEY=VALUE`` pairs -> the training options of every cell that differ from
    ``dynadapter train``'s defaults, validated and normalised as the run records them (so that
    ``hflip=0`` is no recipe at all and ``crop_scale=0.5,1`` equals ``[0.5, 1.0]``)."""
    given = {key.replace("-", "_"): value for key, value in pairs}  # crop-scale, as on the command line
    reserved = sorted(set(given) & SUITE_OPTIONS)
    unknown = sorted(set(given) - set(TrainOptions.model_fields))
    if unknown:
        recipe = sorted(set(TrainOptions.model_fields) - SUITE_OPTIONS)
        raise ConfigError(f"--train-arg {', '.join(unknown)}: unknown option; recipe options: {', '.join(recipe)}")
    if reserved:
        raise ConfigError(f"--train-arg {', '.join(reserved)}: the suite sets this itself, per cell or by its own flag")
    try:
        recorded = TrainOptions(data="-", out=Path("-"), **given).record()
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--train-arg {first['loc'][0]}: {first['msg']}") from None
    defaults = TrainOptions(data="-", out=Path("-")).record()
    return {k: recorded[k] for k in sorted(given) if recorded[k] != defaults[k]}


def recipe_suffix(recipe: dict[str, Any]) -> str:
    """``-r<8 hex digits>`` naming a non-default recipe; empty for the default one."""
    if not recipe:
        return ""
    return "-r" + hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Cell:
    task: str
    petl: str
    variant: str
    seed: int = 0
    shots: int | None = None  # None: every training image

    @property
    def key(self) -> tuple[str, str, str]:
        """What the seeds of a cell share: (task, petl, variant)."""
        return self.task, self.petl, self.variant

    @property
    def name(self) -> str:
        return f"{self.task}/{self.petl}-{self.variant}{self.suffix}"

    @property
    def suffix(self) -> str:
        return (f"-seed{self.seed}" if self.seed else "") + (f"-k{self.shots}" if self.shots else "")

    def overrides(self) -> dict[str, Any]:
        if self.variant in VARIANTS:
            return {"static": self.variant == "static"}
        if self.variant == PROBE:
            return dict(PROBE_OPTIONS)
        return dict(ABLATIONS[self.variant][1])


Results = dict[Cell, "dict[str, Any] | None"]


def main_cells(tasks: Iterable[str], methods: Iterable[str], seeds: Iterable[int] = (0,)) -> list[Cell]:
    """Seed by seed, then method by method (the frozen probe first), so that a partial run already has
    whole suite means for the first seed and methods."""
    tasks = list(tasks)
    return [
        cell
        for s in seeds
        for cell in [Cell(t, PROBE_PETL, PROBE, s) for t in tasks]
        + [Cell(t, m, v, s) for m in methods for t in tasks for v in VARIANTS]
    ]


def ablation_cells(
    tasks: Iterable[str], seeds: Iterable[int] = (0,), variants: Iterable[str] = ABLATIONS
) -> list[Cell]:
    """The ablation's cells: seed by seed, variant by variant (``ABLATIONS``' names), task by task."""
    tasks = list(tasks)
    return [Cell(t, ABLATION_PETL, a, s) for s in seeds for a in variants for t in tasks]


def bf16_autocast_is_fast() -> bool:
    """Whether bfloat16 autocast speeds training up here: on a CUDA GPU, or on a CPU with bfloat16
    instructions (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bfloat16 and a training step is many
    times slower than in float32 (measured on an AVX2-only AMD EPYC: 6.4 s against 0.33 s)."""
    import torch

    if torch.cuda.is_available():
        return True
    return bool(this_cpu().flags & {"avx512_bf16", "amx_bf16"})


@dataclass
class SuiteConfig:
    """Args:
    root: where the cells' run directories live.
    lr, warmup_epochs, batch_size, amp: the one recipe of every cell, static or dynamic, so that they compare.
    img_size, backbone: None keeps ``dynadapter train``'s defaults.
    recipe: further training options of every cell (`recipe_options`: augmentation, regularisation);
        a cell's own overrides (the probe's, the ablations') take precedence.
    int8: also serve every Dyn-Adapter cell (variant ``dyn``) in int8 on OpenVINO (`int8_column`);
        an evaluation, not a training option: a cached cell gets it without training.
    backbone_kwargs: extra ``timm.create_model`` arguments (tests use tiny random ViTs).
    workers: DataLoader workers of every cell (None: ``dynadapter train``'s default).
    device: where cells train (``dynadapter train --device``); not part of a cell's identity, so that a
        suite begun on one machine continues on another. Each cell records the device it ran on.
    records: where each finished cell's result is also kept (``record_path``), read where its run
        directory is absent; None: the run directories only.
    steps: for few-shot cells, train this many optimizer steps whatever K (epochs follow from it);
        None: ``epochs`` for every cell.
    """

    root: Path
    epochs: int
    lr: float
    warmup_epochs: float
    batch_size: int
    amp: bool = False
    img_size: int | None = None
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    workers: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    int8: bool = False
    device: str = "auto"
    records: Path | None = None

    def epochs_for(self, cell: Cell) -> int:
        """``epochs``; for a few-shot cell with ``steps`` set, the epochs that make about that many steps;
        ``PROBE_EPOCHS`` for the frozen probe."""
        if cell.variant == PROBE:
            return PROBE_EPOCHS
        if not (cell.shots and self.steps):
            return self.epochs
        steps_per_epoch = math.ceil(cell.shots * num_classes(cell.task) / self.batch_size)
        return math.ceil(self.steps / steps_per_epoch)

    def cell_dir(self, cell: Cell) -> Path:
        # A learning rate of its own names the cell too: otherwise it would retrain the default's cells.
        default_lr = TrainOptions.model_fields["lr"].default
        identity = self.recipe | ({"lr": self.lr} if self.lr != default_lr else {})
        return Path(self.root) / cell.task / f"{cell.petl}-{cell.variant}{cell.suffix}{recipe_suffix(identity)}"

    def record_path(self, cell: Cell) -> Path | None:
        """``records/<task>/<cell directory>.json``: the cell's ``bench.json``, kept apart from its run."""
        if self.records is None:
            return None
        return Path(self.records) / cell.task / f"{self.cell_dir(cell).name}.json"

    def options(self, cell: Cell) -> TrainOptions:
        given = {"img_size": self.img_size, "backbone": self.backbone, "workers": self.workers}
        defaults = {k: v for k, v in given.items() if v is not None}
        if cell.variant == PROBE:
            defaults["exits"] = list(range(1, self.depth() + 1))
        if cell.shots and self.steps:  # a few-shot epoch is a few steps: validate about FEWSHOT_VALIDATIONS times
            defaults["val_every"] = math.ceil(self.epochs_for(cell) / FEWSHOT_VALIDATIONS)
        return TrainOptions(
            data=f"builtin:{cell.task}",
            out=self.cell_dir(cell),
            petl=cell.petl,
            epochs=self.epochs_for(cell),
            lr=self.lr,
            warmup_epochs=self.warmup_epochs,
            batch_size=self.batch_size,
            amp=self.amp,
            backbone_kwargs=dict(self.backbone_kwargs),
            progress=False,
            seed=cell.seed,
            shots=cell.shots,
            device=self.device,
            **defaults,
            **(self.recipe | cell.overrides()),
        )

    def depth(self) -> int:
        """Blocks of the suite's backbone (the probe has an exit after each)."""
        default = TrainOptions.model_fields
        return backbone_depth(
            self.backbone or default["backbone"].default,
            self.img_size or default["img_size"].default,
            json.dumps(self.backbone_kwargs, sort_keys=True),
        )

    def record(self, cell: Cell) -> dict[str, Any]:
        """The suite-wide settings, for the results page (read from one cell's training options)."""
        opts = self.options(cell)
        return {
            "backbone": opts.backbone,
            "backbone_kwargs": opts.backbone_kwargs,
            "img_size": opts.img_size,
            "epochs": opts.epochs,
            "lr": opts.lr,
            "warmup_epochs": opts.warmup_epochs,
            "batch_size": opts.batch_size,
            "amp": opts.amp_dtype if opts.amp else None,
            "seed": opts.seed,
            "recipe": dict(self.recipe),
        }


@functools.cache
def num_classes(task: str) -> int:
    """Classes of a builtin task."""
    return len(load_raw(f"builtin:{task}", 0).labels)


@functools.cache
def backbone_depth(backbone: str, img_size: int, kwargs_json: str) -> int:
    """Number of blocks of a backbone (built once per process)."""
    return len(BackboneSpec(backbone, img_size, kwargs=json.loads(kwargs_json) or None).build().blocks)


# Options that change where or how fast a cell runs, not what it learns: a cell finished with other values
# is reused. Workers draw no randomness of their own (augmentation is seeded per image and epoch); the device
# changes float rounding, and the result records it as ``device``.
NOT_IDENTITY = ("out", "progress", "device", "workers")


def options_record(opts: TrainOptions) -> dict[str, Any]:
    """What makes a cell's result: the training options, as JSON, without ``NOT_IDENTITY`` (the output
    path, the progress bar, the device and the DataLoader workers)."""
    return {k: v for k, v in opts.record().items() if k not in NOT_IDENTITY}


def cell_device(run_dir: Path) -> str:
    """The device a run trained on, as its config.json names it (a run written before device names
    were recorded: its torch device, e.g. "cpu (model not recorded)")."""
    config = read_config(run_dir)
    return str(config.device_name or f"{config.device} (model not recorded)")


def same_options(stored: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether a cached cell ran with ``current``; an option added since it ran counts at the value runs had
    before it existed (`options.PREDATING`), else at its default."""
    ran = TrainOptions(data="-", out=Path("-")).record() | with_predating(stored)
    return {k: ran[k] for k in current} == current


def load_finished(cell: Cell, config: SuiteConfig) -> dict[str, Any] | None:
    """The cached result of a finished cell (None if it must be trained): its run directory's
    ``bench.json``, else its record (`SuiteConfig.record_path`). A cell with its run directory is
    completed with any part that the code has added since it ran (evaluated there, no training)."""
    run_dir, record = config.cell_dir(cell), config.record_path(cell)
    has_run = (run_dir / BENCH_FILE).is_file()
    if has_run:
        stored = StoredCell.model_validate(json.loads((run_dir / BENCH_FILE).read_text()))
    elif record is not None and record.is_file():
        stored = StoredCell.model_validate(json.loads(record.read_text()))
    else:
        return None
    if not same_options(stored.options, options_record(config.options(cell))):
        log.info("%s was run with other options: it will be trained again", cell.name)
        return None
    missing = missing_parts(cell, config, stored.read())
    if not has_run:
        if missing:
            log.warning(
                "%s: only its record %s is here, not its run directory: its %s stay missing "
                "(train it again into an empty --root to get them)",
                cell.name,
                record,
                ", ".join(missing),
            )
        return stored.result
    if missing or (record is not None and not record.is_file()):
        stored = stored.model_copy(update={"result": complete(cell, config, stored.result, missing)})
        save(cell, config, stored)
    return stored.result


def missing_parts(cell: Cell, config: SuiteConfig, result: CellResult) -> list[str]:
    """The parts that the code has added since the cell ran and that ``complete`` can add."""
    parts = {
        "device": result.device is None,
        # read from the run's calibration.json, where there is one
        "validation numbers": bool(result.modes) and not result.val_modes and has_calibration(config.cell_dir(cell)),
        "shifted numbers": "shifted" not in result.model_fields_set or (cell.variant == PROBE and result.probe is None),
        "int8 numbers": wants_int8(cell, config, result),
    }
    return [name for name, is_missing in parts.items() if is_missing]


def complete(cell: Cell, config: SuiteConfig, result: dict[str, Any], missing: list[str]) -> dict[str, Any]:
    """``result`` with the ``missing`` parts (`missing_parts`), from its run directory (no training)."""
    run_dir, read, result = config.cell_dir(cell), CellResult.model_validate(result), dict(result)
    if "device" in missing:
        result["device"] = cell_device(run_dir)
    if "validation numbers" in missing:
        result["val_modes"] = val_modes(calibrated_modes(run_dir))  # read, not evaluated
    if "shifted numbers" in missing:
        log.info("%s: evaluating the parts added since it ran (no training)", cell.name)
        result.update(extra_evaluations(config.options(cell), cell.variant, _recorded(read.exit_accuracy, cell.name)))
    if "int8 numbers" in missing:
        log.info("%s: serving it in int8 (no training)", cell.name)
        result["int8"] = int8_result(run_dir, _recorded(read.reference_gflops, cell.name))
    return result


def _recorded(value: T | None, name: str) -> T:
    """``value``, a number every finished cell records (ValueError naming the cell where it is absent)."""
    if value is None:
        raise ValueError(f"{name}: its result lacks a number every finished cell records")
    return value


def save(cell: Cell, config: SuiteConfig, stored: StoredCell) -> None:
    """Write a finished cell's options and result to its run directory's ``bench.json`` and to its
    record (compact: a record holds the threshold sweep, and the records are kept in git)."""
    written = stored.model_dump()
    (config.cell_dir(cell) / BENCH_FILE).write_text(json.dumps(written, indent=2))
    record = config.record_path(cell)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(written, sort_keys=True, separators=(",", ":")) + "\n")


def run_cell(cell: Cell, config: SuiteConfig) -> dict[str, Any]:
    """Train the cell, evaluate it on the test split and its shifted copy, and mark it finished."""
    opts = config.options(cell)
    start = time.perf_counter()
    train(opts)
    fits = fit_probe_heads(opts.out) if cell.variant == PROBE else None
    report = EvalReport.model_validate(evaluate_run(opts.out))
    extra = extra_evaluations(opts, cell.variant, report.exit_accuracy)
    reference = report.cumulative_gflops[-1] if opts.static else static_gflops(opts, opts.out)
    # the cell's seconds: all but the int8 column, which times itself
    result = summarize_run(report, reference, time.perf_counter() - start) | {"device": cell_device(opts.out)} | extra
    if fits is not None:
        result["probe"]["heads"] = fits
    if wants_int8(cell, config, CellResult.model_validate(result)):
        result["int8"] = int8_result(opts.out, reference)
    save(cell, config, StoredCell(options=options_record(opts), result=result))
    log.info("%s finished in %.0f s: test accuracy %.4f", cell.name, result["seconds"], result["acc"])
    return result


def wants_int8(cell: Cell, config: SuiteConfig, result: CellResult) -> bool:
    """Whether a Dyn-Adapter cell still lacks the int8 column that ``config`` asks for."""
    return config.int8 and cell.variant == DYN and result.int8 is None


def extra_evaluations(opts: TrainOptions, variant: str, test_exit_accuracy: list[float]) -> dict[str, Any]:
    """The shifted test split's numbers, and for the probe its block chosen on val."""
    run = load_run(opts.out)
    logits, targets = shifted_logits(run.model, run_split(opts.out, run.config, "test"), run.preprocessing, opts)
    shifted = summarize_shifted(run.model, opts.out, logits, targets)
    extra: dict[str, Any] = {"shifted": shifted.model_dump(exclude_unset=True)}
    if variant == PROBE:
        extra["probe"] = probe_choice(run, test_exit_accuracy, _recorded(shifted.exit_accuracy, str(opts.out)))
    return extra


def shifted_logits(
    model: torch.nn.Module, source: Any, pre: Preprocessing, opts: TrainOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits [K, N, C] and the targets [N] on the shifted copy of ``source``: each image
    corrupted once, by the kind and severity ``corruptions.assign`` gives it, at the model's input resolution
    (`CorruptedDataset`, the class calibration's corrupted copies use too)."""
    dataset = CorruptedDataset(ImageDataset(source, pre, opts.max_pixels), opts.seed)
    return loader_logits(model, stream(dataset, opts.workers))


def summarize_shifted(model: Any, run_dir: Path, logits: torch.Tensor, targets: torch.Tensor) -> ShiftedResult:
    """Last-exit and per-exit accuracy on the shifted split, and each calibrated mode's accuracy and
    mean GFLOPs there (the thresholds stay calibration.json's, chosen on validation); written with
    ``model_dump(exclude_unset=True)``: a single-exit model's has no ``modes``."""
    exits = exit_accuracies(logits, targets)
    if len(exits) == 1:
        return ShiftedResult(acc=exits[-1], exit_accuracy=exits)
    modes = calibrated_modes(run_dir)
    rows = sweep(
        logits.numpy(),
        targets.numpy(),
        deployed_cumulative_gflops(model),
        [m.threshold for m in modes.values()],
        early_heads_gflops(model),
    )
    by_mode = {name: ModeResult(acc=r["accuracy"], gflops=r["gflops"]) for name, r in zip(modes, rows, strict=True)}
    return ShiftedResult(acc=exits[-1], exit_accuracy=exits, modes=by_mode)


def probe_choice(run: Run, test_exit_accuracy: list[float], shifted_exit_accuracy: list[float]) -> dict[str, Any]:
    """The frozen probe at its best block on the validation split (the earliest on ties): that block's
    validation, test and shifted-test accuracy, and its GFLOPs (the blocks up to it and its one linear
    head; the other blocks' probes are not run)."""
    val = exit_accuracies(*split_logits(run, None, "val"))
    best = int(np.argmax(val))
    heads = exit_head_gflops(run.model)
    return {
        "block": run.model.config.exits[best],
        "val_acc": val[best],
        "acc": test_exit_accuracy[best],
        "shifted_acc": shifted_exit_accuracy[best],
        "gflops": deployed_cumulative_gflops(run.model)[best] - sum(heads[:best]),
        "val_exit_accuracy": val,
    }


def static_gflops(opts: TrainOptions, run_dir: Path) -> float:
    """GFLOPs of the static baseline of the same PETL method (what Dyn-Adapter's savings are relative
    to; its own full depth costs more, by its early heads)."""
    num_classes = len(read_config(run_dir).labels)
    model, _ = build(opts.model_copy(update={"static": True}), num_classes)
    return deployed_cumulative_gflops(model)[-1]


def summarize_run(report: EvalReport, reference_gflops: float, seconds: float) -> dict[str, Any]:
    """The test-split numbers of a cell: last-exit accuracy and cost, and for a dynamic model the
    calibrated modes (thresholds from the validation split), the threshold sweep and ``val_modes``
    (the modes' accuracy on the validation split itself, and the bootstrap interval of the threshold)."""
    cum = report.cumulative_gflops
    result: dict[str, Any] = {
        "acc": report.exit_accuracy[-1],
        "gflops": cum[-1],
        "reference_gflops": reference_gflops,
        "exit_accuracy": report.exit_accuracy,
        "cumulative_gflops": cum,
        "seconds": round(seconds, 1),
    }
    if len(cum) > 1:
        result["modes"] = {name: _test_mode(m, reference_gflops) for name, m in report.modes.items()}
        result["sweep"] = [[r.gflops, r.accuracy] for r in report.sweep]
        if report.calibrated:
            result["val_modes"] = val_modes(report.calibrated)
    return result


def _test_mode(mode: EvalMode, reference_gflops: float) -> dict[str, float]:
    if mode.gflops is None:
        raise ValueError("an eval report's mode without its GFLOPs")
    saved = 1.0 - mode.gflops / reference_gflops
    return {"threshold": mode.threshold, "acc": mode.accuracy, "gflops": mode.gflops, "saved": saved}


def calibrated_modes(run_dir: Path) -> dict[str, EvalMode]:
    """The modes of a run's calibration.json (thresholds chosen on its validation split)."""
    return Calibration.model_validate(read_calibration(run_dir)).modes


def val_modes(calibrated: dict[str, EvalMode]) -> dict[str, dict[str, float]]:
    """Each calibrated mode's validation accuracy and threshold, with the 5th-95th percentile of the
    threshold over the bootstrap resamples where it was calibrated by bootstrap (calibration.json). The
    accuracy is on the clean validation images alone, also where corrupted copies joined the calibration
    (``val_accuracy``), so that recipes compare on the same images."""
    out = {}
    for name, m in calibrated.items():
        interval = m.spread.model_dump(exclude_none=True) if m.spread else {}
        accuracy = m.val_accuracy if m.val_accuracy is not None else m.accuracy  # clean val, where copies joined
        out[name] = {"acc": accuracy, "threshold": m.threshold, **interval}
    return out


def run_suite(
    cells: list[Cell],
    config: SuiteConfig,
    trainable: set[Cell],
    on_update: Callable[[Results], object] = lambda results: None,
) -> Results:
    """Every cell's result (None where not finished); trains the unfinished cells in ``trainable``,
    calling ``on_update`` after each, so that an interrupted suite leaves its results page current."""
    results: Results = {c: load_finished(c, config) for c in cells}
    todo = [c for c in cells if results[c] is None and c in trainable]
    log.info(
        "%d of %d cells finished earlier, %d to train",
        sum(r is not None for r in results.values()),
        len(cells),
        len(todo),
    )
    with tqdm(total=len(todo), desc="bench cells", unit="cell") as bar:
        for cell in todo:
            bar.set_postfix_str(cell.name)
            # another suite sharing the root or the records may have finished it since the start
            results[cell] = load_finished(cell, config) or run_cell(cell, config)
            on_update(results)
            bar.update()
    return results
