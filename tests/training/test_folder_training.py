"""Training on a generated folder as users have it: screening, caching, refusals, best epoch, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dynadapter.contract import Preprocessing
from dynadapter.errors import ConfigError, DataError
from dynadapter.training import run_dir as rd
from dynadapter.training import trainer
from dynadapter.training.data import ImageDataset, PixelCache, load_raw
from dynadapter.training.data.splits import FileSplit
from dynadapter.training.evaluate import evaluate_run
from dynadapter.training.options import TrainOptions
from tests.support.folders import add_broken, add_litter, class_folder, tiny_options

COUNTS = {"cat": 24, "dog": 24, "owl": 24}


def options(data: Path, out: Path, **overrides: object) -> TrainOptions:
    return tiny_options(data, out, **overrides)


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("photos")
    class_folder(root, COUNTS)
    add_litter(root, "dog")
    return root, add_broken(root, "owl")


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trainer.train(options(messy[0], tmp_path_factory.mktemp("runs") / "messy", workers=2))


def good_files(messy, split: str) -> FileSplit:
    """A split of the messy folder without its broken files."""
    root, broken = messy
    source = load_raw(str(root)).splits[split]
    return source.subset(np.array([i for i, f in enumerate(source.files) if f not in broken.values()], np.int64))


def split_rows(run: Path, split: str) -> list[tuple[str, str]]:
    return rd.read_split(run, split) or []


def test_a_messy_folder_trains_with_its_litter_ignored_and_broken_files_listed(messy, messy_run: Path) -> None:
    _, broken = messy
    config = json.loads((messy_run / "config.json").read_text())
    assert config["labels"] == ["cat", "dog", "owl"]
    with (messy_run / "skipped.csv").open() as f:
        skipped = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in skipped) == sorted(p.name for p in broken.values())
    assert all(r["reason"] for r in skipped)
    listed = [Path(p) for s in ("train", "val", "test") for p, _ in split_rows(messy_run, s)]
    assert len(listed) == len(set(listed)) == sum(COUNTS.values())  # every good image once, no other file
    assert all(
        p.parent.name == c
        for s in ("train", "val", "test")
        for p, c in map(lambda r: (Path(r[0]), r[1]), split_rows(messy_run, s))
    )
    images = config["data_summary"]["images"]
    assert {s: sum(per_class.values()) for s, per_class in images.items()} == {
        s: len(split_rows(messy_run, s)) for s in ("train", "val", "test")
    }
    assert sum(config["data_summary"]["skipped"].values()) == 3
    assert rd.has_calibration(messy_run) and not (messy_run / ".cache").exists()
    assert not (messy_run / rd.RESUME_META).exists()  # finished: nothing to resume


def test_metrics_record_time_throughput_and_the_kept_epoch(messy_run: Path) -> None:
    records = [json.loads(line) for line in (messy_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["seconds"] > 0 and r["images_per_s"] > 0 for r in records)
    assert records[0]["kept"] is True
    best = max(range(2), key=lambda e: (tuple(records[e]["val_objective"]), -e))
    assert records[1]["kept"] == (best == 1)


def test_eval_uses_the_recorded_test_split(messy_run: Path) -> None:
    report = evaluate_run(messy_run, split="test")
    assert report["num_samples"] == len(split_rows(messy_run, "test"))
    cal = rd.read_calibration(messy_run)["calibration"]
    assert cal["num_samples"] == len(split_rows(messy_run, "val"))


def test_bad_images_error_stops_before_training_naming_the_file(messy, tmp_path: Path) -> None:
    root, broken = messy
    with pytest.raises(DataError) as err:
        trainer.train(options(root, tmp_path / "run", bad_images="error"))
    message = str(err.value)
    assert "\n" not in message and any(str(p) in message for p in broken.values())
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_training_and_the_service_see_identical_tensors(messy) -> None:
    """The files go through Preprocessing.load in training, fresh or from the uint8 cache, as in serving."""
    pre = Preprocessing.square(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    split = good_files(messy, "val")
    cached = ImageDataset(split, pre, 10**8, PixelCache(len(split), pre.size))
    first = [cached[i][0].numpy() for i in range(len(split))]  # decoded, and cached
    again = [cached[i][0].numpy() for i in range(len(split))]  # rebuilt from the cache
    served = [pre.load(path.read_bytes(), 10**8) for path in split.files]
    for a, b, c in zip(first, again, served, strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    assert int(cached.cache.filled.sum()) == len(split)


def test_the_disk_cache_gives_the_same_tensors(messy, tmp_path: Path) -> None:
    pre = Preprocessing.square(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    split = good_files(messy, "test")
    cache = PixelCache(len(split), pre.size, tmp_path / "c.u8")
    data = ImageDataset(split, pre, 10**8, cache)
    for _ in range(2):
        for i in range(len(split)):
            np.testing.assert_array_equal(data[i][0].numpy(), pre.load(split.files[i].read_bytes(), 10**8))
    assert (tmp_path / "c.u8").stat().st_size == len(split) * 24 * 24 * 3
    cache.close()
    assert not (tmp_path / "c.u8").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"img_size": 18}, "--img-size 18 is not a multiple of the backbone's patch size 4: use 16"),
        ({"exits": [2, 6]}, "stay within the backbone's 4 blocks"),
    ],
)
def test_options_the_backbone_cannot_use_are_refused_before_training(messy, tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        trainer.train(options(messy[0], tmp_path / "run", **overrides))
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(messy, tmp_path, monkeypatch) -> None:
    calls = {"n": 0}
    original = trainer.AdaptivePrioritization.__call__

    def poisoned(self, logits, targets, progress):
        loss, per_exit = original(self, logits, targets, progress)
        calls["n"] += 1
        return (loss * float("nan"), per_exit) if progress >= 0.5 else (loss, per_exit)

    monkeypatch.setattr(trainer.AdaptivePrioritization, "__call__", poisoned)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"the training loss became nan at epoch 2, .*lower --lr") as err:
        trainer.train(options(messy[0], out))
    assert "checkpoint of epoch 1 is kept" in str(err.value)
    state, meta = rd.read_resume(out)
    assert meta["epoch"] == 1
    kept = load_file(str(out / "checkpoint.safetensors"))
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert all(torch.equal(kept[k], state[f"model.{k}"]) for k in kept)


def test_the_best_epoch_is_kept_not_the_last(messy, tmp_path, monkeypatch) -> None:
    saved: list[dict[str, torch.Tensor]] = []
    original = rd.save_checkpoint
    monkeypatch.setattr(trainer, "val_objective", lambda logits, targets: [(0.9, 0.0), (0.5, 0.0)][len(saved) and 1])
    monkeypatch.setattr(
        rd, "save_checkpoint", lambda out, model: (saved.append(model.trainable_state_dict()), original(out, model))
    )
    out = trainer.train(options(messy[0], tmp_path / "run"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in records] == [True, False] and len(saved) == 1
    kept = load_file(str(out / "checkpoint.safetensors"))
    assert all(torch.equal(kept[k], saved[0][k].cpu()) for k in kept)


def test_resume_continues_an_interrupted_run_exactly(messy, tmp_path, monkeypatch) -> None:
    whole = trainer.train(options(messy[0], tmp_path / "whole", keep="last", epochs=3))
    original = rd.write_resume

    def interrupt_after_epoch_2(out, tensors, meta):
        original(out, tensors, meta)
        if meta["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rd, "write_resume", interrupt_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(options(messy[0], tmp_path / "cut", keep="last", epochs=3))
    monkeypatch.setattr(rd, "write_resume", original)
    recorded = json.loads((tmp_path / "cut" / "config.json").read_text())["train"]
    resumed = trainer.train(TrainOptions(**{**recorded, "resume": tmp_path / "cut"}))
    a, b = load_file(str(whole / "checkpoint.safetensors")), load_file(str(resumed / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (whole, resumed)
    ]
    assert losses[0] == losses[1]
    with pytest.raises(rd.RunDirError, match="nothing to resume"):
        trainer.train(TrainOptions(**{**recorded, "resume": tmp_path / "cut"}))
