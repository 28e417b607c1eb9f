"""The cells of the accuracy suite: one training run per (task, PETL method, variant), cached.

A cell is a run directory ``ROOT/<task>/<petl>-<variant>/`` (what ``dynadapter train`` writes, plus
``eval_test.json`` / ``.png`` from ``dynadapter eval``) and ``bench.json``, written last: the
cell's training options and its test-split results. A cell whose ``bench.json`` holds the same
options is finished and is reused, so an interrupted suite continues where it stopped; a cell run
with other options (another ``--epochs``, say) is trained again. Changes to the code are not
detected: after one that matters, train again into a fresh ``--root``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dynadapter.models.flops import deployed_cumulative_gflops
from dynadapter.training.evaluate import evaluate_run
from dynadapter.training.options import TrainOptions
from dynadapter.training.run_dir import read_config
from dynadapter.training.trainer import build, train

log = logging.getLogger(__name__)

BENCH_FILE = "bench.json"
#: ``static``: the PETL baseline, final head only; ``dyn``: Dyn-Adapter (exits, all parts on).
VARIANTS = ("static", "dyn")
#: The paper's ablation, on Dyn-Adapter with this PETL method: one part switched at a time.
ABLATION_PETL = "adapter"
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "linear-heads": ("balanced heads off (linear heads)", {"heads": "linear"}),
    "equal-weights": ("adaptive loss weighting off (gamma = 0)", {"loss_gamma": 0.0}),
    "no-forward-sparsity": ("forward sparsity off", {"forward_sparsity": 0.0}),
    "no-backward-sparsity": ("backward sparsity off", {"backward_sparsity": 0.0}),
    "distill": ("self-distillation on (weight 0.5)", {"distill": 0.5}),
}


@dataclass(frozen=True)
class Cell:
    task: str
    petl: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.task}/{self.petl}-{self.variant}"

    def overrides(self) -> dict[str, Any]:
        if self.variant in VARIANTS:
            return {"static": self.variant == "static"}
        return dict(ABLATIONS[self.variant][1])


Results = dict[Cell, "dict[str, Any] | None"]


def main_cells(tasks: Iterable[str], methods: Iterable[str]) -> list[Cell]:
    """Method by method, so that a partial run already has whole suite means for the first methods."""
    tasks = list(tasks)
    return [Cell(t, m, v) for m in methods for t in tasks for v in VARIANTS]


def ablation_cells(tasks: Iterable[str]) -> list[Cell]:
    tasks = list(tasks)
    return [Cell(t, ABLATION_PETL, a) for a in ABLATIONS for t in tasks]


@dataclass
class SuiteConfig:
    """Args:
    root: where the cells' run directories live.
    lr, warmup_epochs, batch_size, amp: the one recipe of every cell, static or dynamic, so that they compare.
    img_size, backbone: None keeps ``dynadapter train``'s defaults.
    backbone_kwargs: extra ``timm.create_model`` arguments (tests use tiny random ViTs).
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

    def cell_dir(self, cell: Cell) -> Path:
        return Path(self.root) / cell.task / f"{cell.petl}-{cell.variant}"

    def options(self, cell: Cell) -> TrainOptions:
        defaults = {k: v for k, v in {"img_size": self.img_size, "backbone": self.backbone}.items() if v is not None}
        return TrainOptions(
            data=f"builtin:{cell.task}",
            out=self.cell_dir(cell),
            petl=cell.petl,
            epochs=self.epochs,
            lr=self.lr,
            warmup_epochs=self.warmup_epochs,
            batch_size=self.batch_size,
            amp=self.amp,
            backbone_kwargs=dict(self.backbone_kwargs),
            progress=False,
            **defaults,
            **cell.overrides(),
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
        }


def options_record(opts: TrainOptions) -> dict[str, Any]:
    """What makes a cell's result: the training options, as JSON (without the output path)."""
    return {k: v for k, v in opts.record().items() if k not in ("out", "progress")}


def load_finished(cell: Cell, config: SuiteConfig) -> dict[str, Any] | None:
    path = config.cell_dir(cell) / BENCH_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("options") != options_record(config.options(cell)):
        log.info("%s was run with other options: it will be trained again", cell.name)
        return None
    return stored["result"]


def run_cell(cell: Cell, config: SuiteConfig) -> dict[str, Any]:
    """Train the cell, evaluate it on the test split, and mark it finished."""
    opts = config.options(cell)
    start = time.perf_counter()
    train(opts)
    report = evaluate_run(opts.out)
    seconds = time.perf_counter() - start
    reference = report["cumulative_gflops"][-1] if opts.static else static_gflops(opts, opts.out)
    result = summarize_run(report, reference, seconds)
    (opts.out / BENCH_FILE).write_text(json.dumps({"options": options_record(opts), "result": result}, indent=2))
    log.info("%s finished in %.0f s: test accuracy %.4f", cell.name, seconds, result["acc"])
    return result


def static_gflops(opts: TrainOptions, run_dir: Path) -> float:
    """GFLOPs of the static baseline of the same PETL method (what Dyn-Adapter's savings are relative
    to; its own full depth costs more, by its early heads)."""
    num_classes = len(read_config(run_dir)["labels"])
    model, _ = build(opts.model_copy(update={"static": True}), num_classes)
    return deployed_cumulative_gflops(model)[-1]


def summarize_run(report: dict[str, Any], reference_gflops: float, seconds: float) -> dict[str, Any]:
    """The test-split numbers of a cell: last-exit accuracy and cost, and for a dynamic model the
    calibrated modes (thresholds from the validation split) and the threshold sweep."""
    cum = report["cumulative_gflops"]
    result: dict[str, Any] = {
        "acc": report["exit_accuracy"][-1],
        "gflops": cum[-1],
        "reference_gflops": reference_gflops,
        "exit_accuracy": report["exit_accuracy"],
        "cumulative_gflops": cum,
        "seconds": round(seconds, 1),
    }
    if len(cum) > 1:
        result["modes"] = {
            name: {
                "threshold": m["threshold"],
                "acc": m["accuracy"],
                "gflops": m["gflops"],
                "saved": 1.0 - m["gflops"] / reference_gflops,
            }
            for name, m in report["modes"].items()
        }
        result["sweep"] = [[r["gflops"], r["accuracy"]] for r in report["sweep"]]
    return result


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
            results[cell] = run_cell(cell, config)
            on_update(results)
            bar.update()
    return results
