"""The builtin data sets: real images that packages ship, split deterministically, every class in every split."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest

from dynadapter.errors import DataError
from dynadapter.training.data import BUILTIN_DATASETS, load_raw
from dynadapter.training.data.builtin import ELPV_GRADES, ELPV_SIZES
from dynadapter.training.data.sources import few_shot
from dynadapter.training.data.splits import SPLITS, RawDataset, stratified_indices

#: name -> (labels, split sizes, image shape)
EXPECTED = {
    "digits": ([str(c) for c in range(10)], {"train": 800, "val": 200, "test": 797}, (8, 8)),
    "mnist": ([str(c) for c in range(10)], {"train": 800, "val": 200, "test": 1000}, (28, 28)),
    "elpv": (ELPV_GRADES, ELPV_SIZES, (300, 300)),
    "elpv-type": (["mono", "poly"], ELPV_SIZES, (300, 300)),
}
#: images per class in the whole of ELPV (the package's labels.csv)
ELPV_COUNTS = {"elpv": [1508, 295, 106, 715], "elpv-type": [1074, 1550]}


@functools.cache
def load(name: str, seed: int = 0) -> RawDataset:
    return load_raw(f"builtin:{name}", seed)


def test_every_builtin_data_set_is_covered_here() -> None:
    assert set(BUILTIN_DATASETS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shapes_sizes_and_labels(name: str) -> None:
    labels, sizes, shape = EXPECTED[name]
    raw = load(name)
    assert raw.labels == labels
    assert sizes["train"] <= 800 and sizes["val"] <= 200
    for split in SPLITS:
        part = raw.splits[split]
        assert len(part.pixels) == len(part.targets) == sizes[split]
        assert part.targets.dtype == np.int64
        assert set(part.targets.tolist()) == set(range(len(labels))), f"{split} lacks a class"
        assert {(p.shape, p.dtype) for p in part.pixels} == {(shape, np.dtype(np.uint8))}


@pytest.mark.parametrize("name", ["elpv", "elpv-type"])
def test_elpv_splits_are_stratified_and_disjoint(name: str) -> None:
    raw = load(name)
    share = np.array(ELPV_COUNTS[name]) / sum(ELPV_COUNTS[name])
    for split in SPLITS:
        counts = np.bincount(raw.splits[split].targets, minlength=len(share))
        assert np.all(np.abs(counts - share * ELPV_SIZES[split]) <= 2), (split, counts)
    digests = [hashlib.sha256(p.tobytes()).hexdigest() for s in SPLITS for p in raw.splits[s].pixels]
    assert len(set(digests)) == len(digests)


def test_loading_is_deterministic_and_the_seed_redraws_the_split() -> None:
    again, first = BUILTIN_DATASETS["elpv-type"](0), load("elpv-type")
    for split in SPLITS:
        np.testing.assert_array_equal(again.splits[split].targets, first.splits[split].targets)
        assert all(
            np.array_equal(a, b) for a, b in zip(again.splits[split].pixels, first.splits[split].pixels, strict=True)
        )
    assert not np.array_equal(load("digits", 1).splits["test"].targets, load("digits").splits["test"].targets)


def test_stratified_indices_are_proportional_disjoint_and_deterministic() -> None:
    targets = np.repeat(np.arange(4), [600, 300, 60, 40])
    sizes = {"train": 400, "val": 100, "test": 300}
    split = stratified_indices(targets, sizes, seed=0)
    for name, idx in split.items():
        assert len(idx) == sizes[name]
        counts = np.bincount(targets[idx], minlength=4)
        assert np.all(np.abs(counts - sizes[name] * np.array([0.6, 0.3, 0.06, 0.04])) <= 2), (name, counts)
    assert len(np.unique(np.concatenate(list(split.values())))) == sum(sizes.values())
    again, other = stratified_indices(targets, sizes, seed=0), stratified_indices(targets, sizes, seed=1)
    assert all(np.array_equal(split[s], again[s]) for s in SPLITS)
    assert not np.array_equal(split["train"], other["train"])


def test_stratified_indices_refuse_splits_larger_than_the_data() -> None:
    with pytest.raises(ValueError, match="need 1100 images, the data set has 1000"):
        stratified_indices(np.zeros(1000, dtype=np.int64), {"train": 800, "val": 200, "test": 100}, seed=0)


def test_few_shot_draws_k_per_class_nested_and_seeded() -> None:
    raw = load("digits")
    two, four = few_shot(raw, 2, seed=0), few_shot(raw, 4, seed=0)
    assert np.bincount(two.splits["train"].targets).tolist() == [2] * 10
    assert np.bincount(four.splits["train"].targets).tolist() == [4] * 10
    # val and test are the data set's own, whole
    assert two.splits["val"] is raw.splits["val"] and two.splits["test"] is raw.splits["test"]
    images = {k: {x.tobytes() for x in d.splits["train"].pixels} for k, d in (("2", two), ("4", four))}
    assert images["2"] <= images["4"]  # the 2-shot images are among the 4-shot ones
    again, other = few_shot(raw, 2, seed=0), few_shot(raw, 2, seed=1)
    assert {x.tobytes() for x in again.splits["train"].pixels} == images["2"]
    assert {x.tobytes() for x in other.splits["train"].pixels} != images["2"]


def test_few_shot_refuses_more_shots_than_a_class_has() -> None:
    raw = load("elpv")  # 'defect 2/3' is the smallest class of the train split
    smallest = int(np.bincount(raw.splits["train"].targets).min())
    with pytest.raises(DataError, match=f"class 'defect 2/3' has only {smallest} training images"):
        few_shot(raw, smallest + 1, seed=0)


def test_a_few_shot_runs_recorded_train_split_is_its_k_images_a_class(tmp_path) -> None:
    """What reads a run's train split afterwards (the frozen probe's fit, int8 calibration) sees the
    images the run trained on. It had read the whole builtin train split of a few-shot run: the
    1-shot frozen probe on digits was fitted on all 800 images and scored 93.9%."""
    from dynadapter.contract import Preprocessing
    from dynadapter.models.dynamic_vit import DynamicViTConfig
    from dynadapter.training.data import read_dataset, run_split
    from dynadapter.training.options import TrainOptions
    from dynadapter.training.run_dir import BackboneSpec, RunConfig

    opts = TrainOptions(data="builtin:digits", out=tmp_path, shots=2, seed=3)
    trained = read_dataset(opts, None)
    pre, backbone = Preprocessing.square(16, (0.5,) * 3, (0.5,) * 3), BackboneSpec("vit_tiny_patch16_224", 16)
    # no split files: builtin
    config = RunConfig(
        data=opts.data,
        labels=trained.labels,
        train=opts,
        preprocessing=pre,
        backbone=backbone,
        model=DynamicViTConfig(10, [4]),
    )
    for split in SPLITS:
        recorded, used = run_split(tmp_path, config, split), trained.splits[split]
        assert recorded.targets.tolist() == used.targets.tolist()
        assert [x.tobytes() for x in recorded.pixels] == [x.tobytes() for x in used.pixels]
    assert np.bincount(run_split(tmp_path, config, "train").targets).tolist() == [2] * 10
    # Evaluated on another data set, nothing of the run's K-shot draw applies.
    assert len(run_split(tmp_path, config, "train", data="builtin:mnist").targets) == 800
