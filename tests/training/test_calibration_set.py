"""training/calibration_set.py: thresholds chosen on the validation images and their corrupted copies
(``dynadapter train --calibration-corrupted``), on a tiny real run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dynadapter import cli
from dynadapter.contract import Calibration, ThresholdChoice
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training.calibration import calibrate, recorded_resampling, simulate, softmax_confidence
from dynadapter.training.calibration_set import (
    calibrate_set,
    calibration_logits,
    copies_seed,
    mode_text,
)
from dynadapter.training.corruptions import (
    CALIBRATION_SEVERITIES,
    KINDS,
    CorruptedDataset,
    corrupt,
    image_seed,
)
from dynadapter.training.data import to_uint8
from dynadapter.training.evaluate import split_dataset, split_logits
from dynadapter.training.exit_health import health_record, losing_exits
from dynadapter.training.run_dir import Run, load_run
from tests.support.tiny import train_tiny_run

VAL_IMAGES = 200  # builtin:digits' validation split


@pytest.fixture(scope="module")
def corrupted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny run calibrated on val + one corrupted copy, and its training log."""
    handler, logger = _Capture(), logging.getLogger("dynadapter.training.trainer")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run = train_tiny_run(tmp_path_factory.mktemp("shiftcal") / "run", epochs=1, calibration_corrupted=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return run, "\n".join(handler.lines)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def loaded(corrupted_run: tuple[Path, str]) -> Run:
    return load_run(corrupted_run[0])


def calibration(run: Path) -> dict:
    return json.loads((run / "calibration.json").read_text())


def test_without_copies_the_calibration_is_the_clean_val_splits_as_before(loaded: Run) -> None:
    """``--calibration-corrupted 0``: the very calibration of the validation logits alone, with the exits'
    health on them (training/exit_health.py) and no key of the copies."""
    opts = loaded.config.train.model_copy(update={"calibration_corrupted": 0})
    logits, targets = split_logits(loaded, None, "val")
    model = loaded.model
    before = calibrate(
        logits,
        targets,
        deployed_cumulative_gflops(model),
        early_heads_gflops(model),
        **recorded_resampling(loaded.config.train),
    )
    health = health_record(losing_exits(logits, targets, model.config.exits), "val", VAL_IMAGES)
    assert calibrate_set(model, split_dataset(loaded, None, "val"), opts) == before | {"exit_health": health}
    assert before["calibration"]["num_samples"] == VAL_IMAGES and "corrupted_copies" not in before["calibration"]


def test_the_calibration_set_is_val_then_its_corrupted_copies(loaded: Run) -> None:
    val = split_dataset(loaded, None, "val")
    logits, targets = calibration_logits(loaded.model, val, loaded.config.train)
    clean_logits, clean_targets = split_logits(loaded, None, "val")
    assert logits.shape == (4, 2 * VAL_IMAGES, 10) and targets.tolist() == 2 * clean_targets.tolist()
    assert np.array_equal(logits[:, :VAL_IMAGES].numpy(), clean_logits.numpy())  # the clean images first
    assert not np.array_equal(logits[:, VAL_IMAGES:].numpy(), clean_logits.numpy())


def test_the_copies_are_the_val_images_corrupted_at_low_severities(loaded: Run) -> None:
    val = split_dataset(loaded, None, "val")
    seed = copies_seed(loaded.config.train.seed)
    copies = CorruptedDataset(val, seed, 1, CALIBRATION_SEVERITIES)
    kinds, counts = np.unique(copies.kinds, return_counts=True)
    assert set(kinds) == set(KINDS) and counts.max() - counts.min() <= 1  # every kind an equal share
    assert np.bincount(copies.severities).tolist() == [0, VAL_IMAGES // 2, VAL_IMAGES // 2]  # 1 and 2 alike
    for p in (0, 7, 199):
        clean = to_uint8(val.image(p), val.pre)
        expected = corrupt(clean, str(copies.kinds[p]), int(copies.severities[p]), image_seed(seed, p))
        assert np.array_equal(copies.pixels(p), expected)
        image, target = copies[p]
        assert target == int(val.targets[p]) and image.shape == (3, 16, 16)


def test_the_copies_repeat_for_a_seed_and_change_with_it(loaded: Run) -> None:
    val = split_dataset(loaded, None, "val")
    a, b = (CorruptedDataset(val, copies_seed(0), 2, CALIBRATION_SEVERITIES) for _ in range(2))
    other = CorruptedDataset(val, copies_seed(1), 2, CALIBRATION_SEVERITIES)
    assert len(a) == 2 * VAL_IMAGES and a.targets.tolist() == 2 * val.targets.tolist()
    same = [np.array_equal(a.pixels(p), b.pixels(p)) for p in range(0, len(a), 37)]
    differ = [not np.array_equal(a.pixels(p), other.pixels(p)) for p in range(0, len(a), 37)]
    assert all(same) and sum(differ) >= len(differ) - 1  # a mild copy may round to its clean pixels
    assert copies_seed(0) != image_seed(0, 0)  # not the draws of the shifted test split's image 0


def test_calibration_json_records_the_copies_and_each_parts_accuracy(corrupted_run: tuple[Path, str]) -> None:
    run, _ = corrupted_run
    cal = calibration(run)
    record = cal["calibration"]
    assert (record["num_samples"], record["val_samples"], record["corrupted_copies"]) == (2 * VAL_IMAGES, 200, 1)
    assert record["corrupted_severities"] == [1, 2]
    loaded = load_run(run)
    logits, targets = (
        t.numpy() for t in calibration_logits(loaded.model, split_dataset(loaded, None, "val"), loaded.config.train)
    )
    confidence, predicted = softmax_confidence(logits.astype(np.float64))
    cum, heads = deployed_cumulative_gflops(loaded.model), early_heads_gflops(loaded.model)

    def accuracy(part: slice, threshold: float) -> float:
        return simulate(confidence[:, part], predicted[:, part], targets[part], cum, threshold, heads)["accuracy"]

    for mode in cal["modes"].values():
        t = mode["threshold"]
        assert mode["val_accuracy"] == accuracy(slice(None, VAL_IMAGES), t)
        assert mode["corrupted_accuracy"] == accuracy(slice(VAL_IMAGES, None), t)
        assert mode["accuracy"] == accuracy(slice(None), t)
        assert mode["accuracy"] == pytest.approx((mode["val_accuracy"] + mode["corrupted_accuracy"]) / 2)


def test_calibrate_reproduces_the_thresholds_training_wrote_and_prints_both_accuracies(
    corrupted_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, log = corrupted_run
    written = calibration(run)
    cli.main(["calibrate", str(run)])
    assert calibration(run) == written
    printed = capsys.readouterr().out
    for name, mode in written["modes"].items():
        line = mode_text(name, mode, written["calibration"])
        assert line in printed and f"calibrated {line}" in log
    balanced = written["modes"]["balanced"]
    assert (
        f"balanced threshold {balanced['threshold']:.4f}: accuracy {balanced['accuracy']:.4f} on val + 1 corrupted "
        f"copy (clean val {balanced['val_accuracy']:.4f}, corrupted {balanced['corrupted_accuracy']:.4f}), "
    ) in printed


def test_the_manifest_schema_defines_every_key_calibration_json_gains(corrupted_run: tuple[Path, str]) -> None:
    """``dynadapter export`` refuses a manifest field its schema does not define (``new_manifest``): the
    copies' record and the modes' two accuracies are defined, and read back as written."""
    written = calibration(corrupted_run[0])
    read = Calibration.model_validate(written["calibration"])
    assert not read.model_extra and (read.corrupted_copies, read.corrupted_severities) == (1, [1, 2])
    assert read.val_samples == VAL_IMAGES
    for mode in written["modes"].values():
        choice = ThresholdChoice.model_validate(mode)
        assert not choice.model_extra and not (choice.spread and choice.spread.model_extra)
        assert (choice.val_accuracy, choice.corrupted_accuracy) == (mode["val_accuracy"], mode["corrupted_accuracy"])


def test_eval_sets_each_modes_clean_val_accuracy_beside_its_test_accuracy(
    corrupted_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = corrupted_run
    cli.main(["eval", str(run)])
    printed = capsys.readouterr().out
    report = json.loads((run / "eval_test.json").read_text())
    for name, mode in calibration(run)["modes"].items():
        test = report["modes"][name]
        assert (
            f"mode {name:<8} threshold {mode['threshold']:.4f}: accuracy {test['accuracy']:.4f} "
            f"(val {mode['val_accuracy']:.4f}), "
        ) in printed
