"""Small models of the accuracy suite's sections of docs/results.json (``suite.aggregate`` writes them as plain
dicts, so their keys and order stay as they were), read once where the page is rendered
(``SuiteResults.model_validate(results)``) so that the renderers use attributes, not string keys; and of what
those sections are made from: a cell's result (``CellResult``, one seed; ``CombinedCell``, the mean over its
seeds), its ``bench.json`` (``StoredCell``) and a run's reports. Fields a section written before them lacks read
as None (or empty); keys a model does not name are ignored."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, model_validator

from dynadapter.bench.lab.rows import Row
from dynadapter.bench.suite.targets import ClaimVerdict, ExitVerdict, Int8Verdict, ShiftVerdict


class ModeResult(Row):
    """One mode (``fast``, ``balanced``, ``accurate``) of a cell or a mean: test accuracy in [0, 1], mean GFLOPs
    per image, the share of the static baseline's FLOPs saved (0..1) and a cell's threshold in [0, 1]; None where
    the section does not say (the shifted split has no ``saved``, the ablation no ``gflops``, a mean no
    ``threshold``)."""

    acc: float | None
    gflops: float | None = None
    saved: float | None = None
    threshold: float | None = None


class ValMode(ModeResult):
    """A mode on the validation split (``cells.val_modes``): accuracy and threshold, with the 5th-95th percentile
    of the threshold over the bootstrap resamples where it was calibrated by bootstrap (None elsewhere)."""

    threshold_low: float | None = None
    threshold_high: float | None = None

    def interval(self) -> list[float] | None:
        """``[threshold_low, threshold_high]``, None where either end is absent."""
        if self.threshold_low is None or self.threshold_high is None:
            return None
        return [self.threshold_low, self.threshold_high]


class SuiteRow(Row):
    """A ``rows`` entry: one (task, PETL method), or the suite ``mean`` of a method over ``tasks`` tasks.
    Accuracies are fractions (means over the seeds, ``*_std`` their standard deviation), GFLOPs per image;
    ``dyn*`` hold the Dyn-Adapter modes by name (None where the cell did not finish)."""

    task: str
    petl: str
    tasks: int = 0
    seeds: dict[str, int | None] | None = None
    static_acc: float | None = None
    static_acc_std: float | None = None
    static_shifted_acc: float | None = None
    static_shifted_acc_std: float | None = None
    static_gflops: float | None = None
    dyn: dict[str, ModeResult] | None = None
    dyn_acc_std: dict[str, float | None] | None = None
    dyn_shifted: dict[str, ModeResult | None] | None = None
    dyn_shifted_acc_std: dict[str, float | None] | None = None
    dyn_int8: dict[str, ModeResult] | None = None
    dyn_int8_acc_std: dict[str, float | None] | None = None
    int8_refused: bool | None = None
    dyn_val: dict[str, float | None] | None = None
    dyn_val_acc_std: dict[str, float | None] | None = None
    balanced_threshold: float | None = None
    balanced_threshold_std: float | None = None
    balanced_interval: list[float] | None = None
    dyn_full_acc: float | None = None
    dyn_exit_acc: list[float] | None = None
    dyn_shifted_full_acc: float | None = None
    dyn_shifted_exit_acc: list[float] | None = None
    dyn_best_at_target: float | None = None
    int8_agreement: list[float] | None = None


class ProbeRow(Row):
    """A ``probe`` entry: the frozen probe on one task (``blocks``: the block chosen per seed) or its ``mean``
    over ``tasks``; accuracies as fractions, GFLOPs per image (None before it finished)."""

    task: str
    blocks: list[int] | None = None
    tasks: int = 0
    acc: float | None = None
    acc_std: float | None = None
    shifted_acc: float | None = None
    shifted_acc_std: float | None = None
    val_acc: float | None = None
    gflops: float | None = None


class AblationRow(Row):
    """An ``ablation`` entry: one variant's suite mean at ``balanced`` and ``accurate`` (accuracy and FLOPs
    saved, None where no task finished), over ``tasks`` finished tasks, ``missing`` the others; ``seeds``
    the seeds it is the mean over (None in sections written before ``--ablation-seeds``: all of the suite's)."""

    variant: str
    label: str
    tasks: int
    missing: list[str]
    seeds: list[int] | None = None
    balanced: ModeResult | None = None
    accurate: ModeResult | None = None

    def mode(self, name: str) -> ModeResult | None:
        """The ``balanced`` or ``accurate`` result by name."""
        return {"balanced": self.balanced, "accurate": self.accurate}[name]


class RecordedConfig(Row):
    """The suite's ``config``: what every cell was trained with (the backbone at ``img_size`` pixels, epochs,
    AdamW settings); ``amp`` the autocast dtype (None or False: float32); ``seeds`` None in sections written
    before ``--seeds`` (``seed`` alone)."""

    backbone: str
    img_size: int
    epochs: int
    lr: float | None = None
    warmup_epochs: float | None = None
    batch_size: int | None = None
    amp: str | bool | None = None
    seed: int = 0
    seeds: list[int] | None = None
    recipe: dict[str, Any] = {}

    @property
    def seed_list(self) -> list[int]:
        """The seeds the run asked for."""
        return list(self.seeds) if self.seeds is not None else [self.seed]


class CellTiming(Row):
    """``timing`` per kind of cell: how many finished and their mean and total wall-clock seconds."""

    cells: int
    mean_s: float
    total_s: float


class Budget(Row):
    """``budget``: the whole default suite's projected seconds (``plan``: cells per kind) against ``bound_s``."""

    plan: dict[str, int]
    projected_s: float
    bound_s: float
    met: bool


class SuiteResults(Row):
    """The suite's sections of results.json, as ``suite.aggregate`` writes them."""

    config: RecordedConfig
    tasks: list[str]
    rows: list[SuiteRow]
    probe: list[ProbeRow] = []
    target: list[ClaimVerdict] = []
    shift_target: list[ShiftVerdict] = []
    exit_target: list[ExitVerdict] = []
    int8_target: list[Int8Verdict] = []
    ablation: list[AblationRow] = []
    missing: list[str] = []
    timing: dict[str, CellTiming] = {}
    budget: Budget | None = None
    devices: dict[str, int] | None = None

    def means(self) -> dict[str, SuiteRow]:
        """The suite-mean row of each PETL method."""
        return {r.petl: r for r in self.rows if r.task == "mean"}


class FewshotPoint(Row):
    """One arm of a ``fewshot`` row: test and shifted-test accuracy (fractions), GFLOPs per image, over ``seeds``
    seeds; ``block`` the probe's block (None for the other arms)."""

    acc: float
    shifted_acc: float
    gflops: float
    block: float | None = None
    seeds: int | None = None


class FewshotRow(Row):
    """A ``fewshot`` row: one task at K = ``shots`` images per class, each arm's point (None where missing)."""

    task: str
    shots: int
    dyn: FewshotPoint | None = None
    static: FewshotPoint | None = None
    probe: FewshotPoint | None = None

    def arm(self, name: str) -> FewshotPoint | None:
        """The point of arm ``dyn``, ``static`` or ``probe``."""
        return {"dyn": self.dyn, "static": self.static, "probe": self.probe}[name]


class FewshotSection(Row):
    """results.json's ``fewshot``: the tasks, the Ks, the PETL method, the seeds and the optimizer steps per cell."""

    tasks: list[str]
    shots: list[int]
    petl: str
    seeds: list[int]
    steps: int
    config: RecordedConfig
    rows: list[FewshotRow]


class RecipePoint(Row):
    """``balanced`` under one recipe (a task's, or their mean): accuracy on val, test and shifted test, and the
    share of the static FLOPs saved (all fractions)."""

    val_acc: float
    acc: float
    shifted_acc: float
    saved: float


class RecipeMode(Row):
    """One mode under one recipe, suite mean: accuracy on val (clean images), test and shifted test, and the
    share of the static FLOPs saved (fractions)."""

    val_acc: float
    acc: float
    shifted_acc: float
    saved: float


class RecipeTargets(Row):
    """A complete recipe judged by the accuracy suite's targets against the default recipe's static and
    frozen-probe cells of the same tasks and seeds: the paper's claim, the shifted split's, every exit's floor."""

    claim: ClaimVerdict
    shift: ShiftVerdict
    exits: ExitVerdict


class RecipeRow(Row):
    """A ``recipes`` row: one recipe (its train ``options``), its mean where ``complete``, its tasks (None where
    missing) and the standard error of its suite-mean validation accuracy; where complete, every mode's suite
    mean (``modes``, None in sections written before them) and its ``targets``."""

    recipe: str
    options: dict[str, Any]
    complete: bool
    missing: list[str]
    mean: RecipePoint | None = None
    tasks: dict[str, RecipePoint | None]
    val_se: float | None = None
    modes: dict[str, RecipeMode] | None = None
    targets: RecipeTargets | None = None


class RecipeMargin(Row):
    """By how much (fractions) the ``best`` recipe on validation leads the chosen one, and the noise ``band``."""

    best: str
    difference: float
    band: float


#: A recipe choice's margin; written as {} where no recipe finished.
ChoiceMargin = Annotated[RecipeMargin | None, BeforeValidator(lambda margin: margin or None)]


class RecipesSection(Row):
    """One PETL method's part of results.json's ``recipes``: its recipes' rows (``not_run``: candidates with no
    finished cell, left out), the recipe ``chosen`` on validation (None before every task finished), the ones
    ``tied`` with it within noise and the ``margin`` to the best."""

    petl: str
    seeds: list[int]
    config: RecordedConfig
    rows: list[RecipeRow]
    not_run: list[str] = []
    val_images: int | None = None
    chosen: str | None = None
    tied: list[str] | None = None
    margin: ChoiceMargin = None


class RecipesPage(Row):
    """results.json's ``recipes``: each PETL method's `RecipesSection` and the recipe ``chosen`` over them (with one
    method, its own choice; with several, on the mean of their validation accuracies), the ones ``tied`` with
    it and the ``margin`` to the best."""

    sections: list[RecipesSection]
    chosen: str | None = None
    tied: list[str] | None = None
    margin: ChoiceMargin = None

    @model_validator(mode="before")
    @classmethod
    def _one_method(cls, page: Any) -> Any:
        """A page written before several methods: one section, its own choice."""
        if isinstance(page, dict) and "sections" not in page:
            return {"sections": [page], **{k: page.get(k) for k in ("chosen", "tied", "margin")}}
        return page


class DataConfig(Row):
    """The ``data`` benchmark's settings: generated photo size (``WxH``), model input pixels, epochs, DataLoader
    workers, the uint8 cache kind, the batch and the backbone whose training steps are timed."""

    photo_size: str
    img_size: int
    epochs: int
    workers: int
    cache: str
    batch_size: int
    backbone: str
    model_steps: int | None = None


class DataRow(Row):
    """One folder size of ``data``: images/s of the decoding and the cached epochs, peak RSS in MiB (kept as
    written, int or float, since the page prints them as they are)."""

    images: int
    decode_images_per_s: int | float | None
    cached_images_per_s: int | float | None
    peak_rss_main_mib: int | float
    peak_rss_worker_mib: int | float


class DataSection(Row):
    """results.json's ``data``: its settings, one row per folder size, the model's training rate (images/s)."""

    config: DataConfig
    rows: list[DataRow]
    model_images_per_s: int | float | None = None
    note: str | None = None


class ModeSpread(Row):
    """The 5th-95th percentile of a mode's threshold over the bootstrap resamples (calibration's ``spread``);
    None where the mode was calibrated without resampling."""

    threshold_low: float | None = None
    threshold_high: float | None = None


class EvalMode(Row):
    """A calibrated mode as a run's reports hold it (``eval_<split>.json``'s ``modes`` and ``calibrated``, and
    calibration.json's ``modes``): its threshold in [0, 1], accuracy (0..1) and mean GFLOPs per image on the
    split (None where the report does not say), and the bootstrap ``spread`` of the threshold. Where corrupted
    copies joined the calibration, ``accuracy`` is on the whole calibration set and ``val_accuracy`` /
    ``corrupted_accuracy`` on the clean validation images / the copies alone (None elsewhere)."""

    threshold: float
    accuracy: float
    gflops: float | None = None
    spread: ModeSpread | None = None
    val_accuracy: float | None = None
    corrupted_accuracy: float | None = None


class SweepPoint(Row):
    """A threshold of the eval sweep: mean GFLOPs per image and accuracy (0..1)."""

    gflops: float
    accuracy: float


class EvalReport(Row):
    """What the suite reads of ``training.evaluate``'s report on a split: each exit's accuracy and the
    cumulative GFLOPs per image at each exit; for a dynamic model the calibrated modes, the threshold sweep and
    (where calibration ran on this report's run) the modes on the validation split."""

    exit_accuracy: list[float]
    cumulative_gflops: list[float]
    modes: dict[str, EvalMode] = {}
    sweep: list[SweepPoint] = []
    calibrated: dict[str, EvalMode] | None = None


class Calibration(Row):
    """calibration.json as the suite reads it: the named modes."""

    modes: dict[str, EvalMode]


class ShiftedResult(Row):
    """A cell's numbers on the shifted test split (``cells.summarize_shifted`` writes them, in this order):
    last-exit and per-exit accuracy (0..1) and, for a dynamic model, each mode's accuracy and GFLOPs per image
    at the thresholds calibration.json holds (chosen on validation)."""

    acc: float | None = None
    exit_accuracy: list[float] | None = None
    modes: dict[str, ModeResult] = {}


class ShiftedSpread(Row):
    """The shifted split's accuracies' sample standard deviation over seeds (None with one seed)."""

    acc: float | None = None
    modes: dict[str, ModeResult] = {}


class ProbeChoice(Row):
    """The frozen probe at its block best on val (``cells.probe_choice``): that block, accuracies (0..1) and
    GFLOPs per image."""

    block: int
    acc: float
    shifted_acc: float
    gflops: float
    val_acc: float | None = None


class Int8Modes(Row):
    """The modes served in int8 at int8's own thresholds (``int8_column.int8_result``'s ``modes``); also the
    shape of their spread over seeds."""

    modes: dict[str, ModeResult] = {}


class Int8Result(Int8Modes):
    """A Dyn-Adapter cell's int8 column (``int8_column.int8_result``): its modes, each exit's argmax agreement
    with PyTorch on validation (0..1), the last exit's validation accuracy drop and the export's bound on it
    (fractions), and the column's own wall-clock seconds."""

    argmax_agreement: list[float] | None = None
    val_acc_drop: float | None = None
    allowed_drop: float | None = None
    seconds: float | None = None


class CellNumbers(Row):
    """What the suite reads of a finished cell's result (``cells.run_cell``), one seed's or the mean over its
    seeds: last-exit test accuracy (0..1) and GFLOPs per image, the static baseline's GFLOPs
    (``reference_gflops``),
    each exit's accuracy, the threshold sweep as (GFLOPs, accuracy) pairs, the modes on test (``modes``) and on
    validation (``val_modes``), the shifted split, the int8 column, wall-clock seconds and the training device.
    A static cell has no modes, sweep or int8 column (empty or None)."""

    acc: float | None = None
    gflops: float | None = None
    reference_gflops: float | None = None
    exit_accuracy: list[float] | None = None
    sweep: list[tuple[float, float]] = []
    modes: dict[str, ModeResult] = {}
    val_modes: dict[str, ValMode] = {}
    shifted: ShiftedResult = ShiftedResult()
    int8: Int8Result | None = None
    seconds: float | None = None  # every cell the suite ran records it; results written by hand may not
    device: str | None = None

    def balanced(self) -> ModeResult:
        """The ``balanced`` mode on test; ValueError for a cell without modes (a static or probe cell)."""
        if "balanced" not in self.modes:
            raise ValueError("a cell without calibrated modes has no balanced point")
        return self.modes["balanced"]

    def cell_seconds(self) -> float:
        """The cell's wall-clock seconds with its int8 column's (which times itself); ValueError without them."""
        if self.seconds is None:
            raise ValueError("a finished cell without its seconds")
        return self.seconds + ((self.int8.seconds or 0.0) if self.int8 else 0.0)


class CellResult(CellNumbers):
    """One seed's finished cell (``cells.run_cell``): ``CellNumbers`` and, for the frozen probe, its block."""

    probe: ProbeChoice | None = None


class ProbeMean(Row):
    """The frozen probe over its seeds (``aggregate.combine``): the block each seed chose, the mean accuracies
    (0..1) and GFLOPs per image."""

    blocks: list[int]
    acc: float
    shifted_acc: float
    val_acc: float | None = None
    gflops: float


class ProbeSpread(Row):
    """The probe's accuracies' sample standard deviation over seeds (None with one seed)."""

    acc: float | None = None
    shifted_acc: float | None = None


class CellSpread(Row):
    """``std`` of a combined cell (``aggregate.combine``): the sample standard deviation over the seeds of each
    accuracy and threshold the page shows, in the shape of the result (None with a single seed)."""

    acc: float | None = None
    modes: dict[str, ModeResult] = {}
    val_modes: dict[str, ModeResult] = {}
    shifted: ShiftedSpread = ShiftedSpread()
    int8: Int8Modes | None = None
    probe: ProbeSpread | None = None


class CombinedCell(CellNumbers):
    """A cell over the seeds that finished (``aggregate.combine``): the mean of every number of
    ``CellNumbers``, the probe's, ``seeds`` (how many) and ``std`` (their spread)."""

    seeds: int
    std: CellSpread
    probe: ProbeMean | None = None


class StoredCell(Row):
    """A finished cell's ``bench.json`` (and its record, ``cells.record_path``): the training options it ran
    with (``cells.options_record``) and its result. The result stays the dict it was written as, so that a
    completed cell is written back with every key it had; ``read`` gives its model."""

    options: dict[str, Any] = {}
    result: dict[str, Any]

    def read(self) -> CellResult:
        """The result, read into its model."""
        return CellResult.model_validate(self.result)
