"""Layouts a user really has: class folders, split folders, CSV manifests; litter ignored; splits disjoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from dynadapter.errors import DataError
from dynadapter.training.data import MAX_HOLDOUT, FileSplit, SplitSizes, check_classes, load_raw
from tests.training.folders import add_litter, class_folder

COUNTS = {"cat": 30, "dog": 20, "owl": 10}


def names(split: FileSplit) -> set[Path]:
    return set(split.files)


def test_class_folders_get_a_stratified_seeded_disjoint_split(tmp_path: Path) -> None:
    files = class_folder(tmp_path, COUNTS)
    raw = load_raw(str(tmp_path), seed=3)
    assert raw.labels == ["cat", "dog", "owl"]
    sizes = {s: len(raw.splits[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 42, "val": 9, "test": 9}  # 15% of 60 each
    assert names(raw.splits["train"]) | names(raw.splits["val"]) | names(raw.splits["test"]) == set(files)
    assert not names(raw.splits["train"]) & names(raw.splits["val"])
    assert not names(raw.splits["train"]) & names(raw.splits["test"])
    assert not names(raw.splits["val"]) & names(raw.splits["test"])
    for s in ("val", "test"):  # in proportion 3:2:1, to within the stratification's +-2
        counts = np.bincount(raw.splits[s].targets, minlength=3)
        assert np.all(np.abs(counts - np.array([4.5, 3, 1.5])) <= 2), counts
        assert counts.min() >= 1
    for split in raw.splits.values():  # labels follow the folders
        assert all(raw.labels[t] == f.parent.name for f, t in zip(split.files, split.targets, strict=True))
    again = load_raw(str(tmp_path), seed=3)
    assert names(again.splits["val"]) == names(raw.splits["val"])
    assert names(load_raw(str(tmp_path), seed=4).splits["val"]) != names(raw.splits["val"])


def test_split_sizes_as_counts_and_fractions(tmp_path: Path) -> None:
    class_folder(tmp_path, COUNTS)
    raw = load_raw(str(tmp_path), sizes=SplitSizes(val=12, test=0))
    assert (len(raw.splits["train"]), len(raw.splits["val"]), len(raw.splits["test"])) == (48, 12, 0)
    assert SplitSizes().count("val", 1_000_000) == MAX_HOLDOUT
    with pytest.raises(DataError, match="leaves none of the 60 to train on"):
        load_raw(str(tmp_path), sizes=SplitSizes(val=30, test=30))


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", COUNTS)
    val = class_folder(tmp_path / "val", {"cat": 3, "dog": 3, "owl": 3}, start=100)
    test = class_folder(tmp_path / "test", {"cat": 2, "dog": 2, "owl": 2}, start=200)
    raw = load_raw(str(tmp_path))
    assert [names(raw.splits[s]) for s in ("train", "val", "test")] == [set(train), set(val), set(test)]


def test_train_and_val_without_test(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", COUNTS)
    class_folder(tmp_path / "val", {"cat": 4, "dog": 4, "owl": 4}, start=100)
    raw = load_raw(str(tmp_path))
    assert names(raw.splits["train"]) == set(train)
    assert len(raw.splits["val"]) == 12 and len(raw.splits["test"]) == 0


def test_train_alone_gets_val_and_test_carved_out_of_it(tmp_path: Path) -> None:
    train = class_folder(tmp_path / "train", COUNTS)
    raw = load_raw(str(tmp_path))
    assert (len(raw.splits["train"]), len(raw.splits["val"]), len(raw.splits["test"])) == (42, 9, 9)
    assert set().union(*(names(p) for p in raw.splits.values())) == set(train)


def test_classes_are_the_sorted_union_of_the_split_folders(tmp_path: Path) -> None:
    class_folder(tmp_path / "train", {"owl": 12, "cat": 12})
    class_folder(tmp_path / "val", {"dog": 3, "cat": 3}, start=100)
    raw = load_raw(str(tmp_path))
    assert raw.labels == ["cat", "dog", "owl"]
    with pytest.raises(DataError, match="class 'dog' has no images in the train split"):
        check_classes(raw, str(tmp_path))


def test_litter_is_ignored_and_never_a_class(tmp_path: Path) -> None:
    files = class_folder(tmp_path, COUNTS)
    add_litter(tmp_path, "cat")
    raw = load_raw(str(tmp_path))
    assert raw.labels == ["cat", "dog", "owl"]
    assert set().union(*(names(p) for p in raw.splits.values())) == set(files)


def test_csv_manifest_with_and_without_a_split_column(tmp_path: Path) -> None:
    files = class_folder(tmp_path / "pool", COUNTS)
    rows = [(str(f.relative_to(tmp_path)), f.parent.name.upper()) for f in files]
    with (tmp_path / "plain.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    raw = load_raw(str(tmp_path / "plain.csv"))
    assert raw.labels == ["CAT", "DOG", "OWL"]
    assert sum(len(p) for p in raw.splits.values()) == 60 and len(raw.splits["val"]) == 9
    with (tmp_path / "split.csv").open("w", newline="") as f:
        splits = ["train"] * 50 + ["val"] * 10
        csv.writer(f).writerows(
            [("path", "label", "split"), *((p, c, s) for (p, c), s in zip(rows, splits, strict=True))]
        )
    raw = load_raw(str(tmp_path / "split.csv"))
    assert (len(raw.splits["train"]), len(raw.splits["val"]), len(raw.splits["test"])) == (50, 10, 0)
    assert raw.splits["val"].files == [tmp_path / p for p, _ in rows[50:]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: class_folder(root, {"cat": 30}), r"found 1 class\(es\) \['cat'\]; a classifier needs at least 2"),
        (
            lambda root: (class_folder(root / "train", COUNTS), (root / "train" / "yak").mkdir()),
            "class 'yak' has no images in the train split",
        ),
        (
            lambda root: (class_folder(root / "train", COUNTS), class_folder(root / "val", {"cat": 2, "dog": 2})),
            "the val split has 4 images, calibration needs at least 10",
        ),
    ],
)
def test_data_that_cannot_train_is_refused_in_one_line(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        check_classes(load_raw(str(tmp_path)), str(tmp_path))
    assert "\n" not in str(err.value)


def test_a_missing_folder_and_a_bad_manifest_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder or CSV file"):
        load_raw(str(tmp_path / "nope"))
    (tmp_path / "m.csv").write_text("file,class\na.png,cat\n")
    with pytest.raises(DataError, match="needs a header line with the columns path,label"):
        load_raw(str(tmp_path / "m.csv"))
