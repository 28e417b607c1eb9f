"""Layouts a user really has: class folders, split folders, CSV manifests; litter ignored; splits disjoint."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from dynadapter.errors import DataError
from dynadapter.training.data import load_raw
from dynadapter.training.data.sources import check_classes, summary
from dynadapter.training.data.splits import MAX_HOLDOUT, FileSplit, SplitSizes
from tests.support.folders import add_litter, class_folder, image_bytes

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


def _images(folder: Path, label: str, n: int, start: int = 0) -> list[Path]:
    """``n`` images of ``label``'s colour straight into ``folder`` (a class whatever its name)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"img_{i:03d}.png" for i in range(start, start + n)]
    for i, path in enumerate(files):
        path.write_bytes(image_bytes(label, 500 + start + i))
    return files


def per_class(raw) -> dict[str, int]:
    """Images per class over every split, as the run's data summary counts them."""
    table = summary(raw, {})["images"]
    return {c: sum(table[s][c] for s in table) for c in raw.labels}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_class_named_like_a_split_holding_images_is_a_class(tmp_path: Path, split: str) -> None:
    class_folder(tmp_path, {"cat": 12, "dog": 12})
    _images(tmp_path / split, "owl", 12)  # CIFAR-100 has a class `train`
    raw = load_raw(str(tmp_path))
    assert raw.labels == sorted(["cat", "dog", split])
    assert raw.layout == "class folders, split here"
    assert per_class(raw) == {"cat": 12, "dog": 12, split: 12}


def test_classes_named_like_splits_inside_split_folders(tmp_path: Path) -> None:
    for split, n in (("train", 12), ("val", 5)):
        class_folder(tmp_path / split, {"cat": n})
        _images(tmp_path / split / "train", "owl", n)
    raw = load_raw(str(tmp_path))
    assert raw.labels == ["cat", "train"]
    assert raw.layout == "train/val folders"
    assert summary(raw, {})["images"] == {
        "train": {"cat": 12, "train": 12},
        "val": {"cat": 5, "train": 5},
        "test": {"cat": 0, "train": 0},
    }


@pytest.mark.parametrize(
    ("make", "conflict"),
    [
        # class folders beside a split folder of class folders: the classes outside would be dropped
        (
            lambda root: (class_folder(root, COUNTS), class_folder(root / "train", COUNTS)),
            "(train/) with class folders (cat/, dog/, owl/)",
        ),
        # a class `train` of images beside a val/ split
        (
            lambda root: (_images(root / "train", "cat", 4), class_folder(root / "val", {"cat": 3, "dog": 3})),
            "(val/) with class folders (train/)",
        ),
        (
            lambda root: (
                class_folder(root / "train", COUNTS),
                class_folder(root / "test", COUNTS),
                class_folder(root, {"cat": 1, "dog": 1, "owl": 1}),
                (root / "yak").mkdir(),
            ),
            "(train/, test/) with class folders (cat/, dog/, owl/ and 1 more)",
        ),
    ],
)
def test_split_folders_mixed_with_class_folders_are_refused_in_one_line(tmp_path: Path, make, conflict) -> None:
    make(tmp_path)
    with pytest.raises(DataError) as err:
        load_raw(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path} mixes split folders {conflict}: put the class folders into the splits "
        "(DATA/train/<class>/...) or use class folders only (DATA/<class>/...)"
    )


def test_a_split_named_folder_holding_files_and_folders_is_refused(tmp_path: Path) -> None:
    class_folder(tmp_path / "train", COUNTS)
    _images(tmp_path / "train", "cat", 1)  # train/img_000.png beside train/cat/...
    with pytest.raises(DataError) as err:
        load_raw(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'train'} holds both files (img_000.png, ...) and folders (cat/, ...): a split folder "
        "holds class folders only, a class folder its images; move one or the other"
    )


def test_every_file_is_read_once_whatever_links_reach_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    files = class_folder(root, COUNTS)
    cat = root / "cat"
    (cat / "again.png").symlink_to(cat / "img_001.png")  # a symlink beside its target
    os.link(cat / "img_002.png", cat / "hard.png")  # a hard link
    (cat / "nested").mkdir()
    (cat / "nested" / "third.png").symlink_to(cat / "img_004.png")
    (root / "owl" / "loop").symlink_to(root / "owl")  # a link loop: walked once
    extra = _images(tmp_path / "elsewhere", "dog", 5, start=100)  # a linked folder of new images is read
    (root / "dog" / "more").symlink_to(tmp_path / "elsewhere")
    raw = load_raw(str(root))
    assert per_class(raw) == {"cat": 30, "dog": 25, "owl": 10}
    assert raw.duplicates == 3
    assert summary(raw, {})["duplicates"] == 3
    listed = [f.stat().st_ino for split in raw.splits.values() for f in split.files]  # the files, not the links
    assert len(listed) == len(set(listed)) == 65
    assert set(listed) == {f.stat().st_ino for f in [*files, *extra]}


def test_a_file_linked_under_two_classes_is_refused_naming_both(tmp_path: Path) -> None:
    class_folder(tmp_path, COUNTS)
    (tmp_path / "dog" / "which.png").symlink_to(tmp_path / "cat" / "img_001.png")
    with pytest.raises(DataError) as err:
        load_raw(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'cat' / 'img_001.png'} (class 'cat') and {tmp_path / 'dog' / 'which.png'} (class 'dog') "
        "are one file through a link: a file is read once, under one class; remove one of them"
    )


def test_a_file_linked_into_two_splits_is_refused_naming_both(tmp_path: Path) -> None:
    class_folder(tmp_path / "train", COUNTS)
    class_folder(tmp_path / "val", {"cat": 4, "dog": 4, "owl": 4}, start=100)
    os.link(tmp_path / "train" / "owl" / "img_003.jpeg", tmp_path / "val" / "owl" / "leak.jpeg")
    with pytest.raises(DataError) as err:
        load_raw(str(tmp_path))
    assert str(err.value) == (
        f"{tmp_path / 'train' / 'owl' / 'img_003.jpeg'} (train) and {tmp_path / 'val' / 'owl' / 'leak.jpeg'} "
        "(val) are one file through a link: a file is read once, in one split; remove one of them"
    )


def test_a_manifest_reads_each_file_once_and_refuses_one_under_two_labels(tmp_path: Path) -> None:
    files = class_folder(tmp_path / "pool", COUNTS)
    rows = [(str(f.relative_to(tmp_path)), f.parent.name) for f in files]
    (tmp_path / "pool" / "alias.png").symlink_to(files[1])
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows, rows[0], ("pool/alias.png", "cat")])
    raw = load_raw(str(tmp_path / "m.csv"))
    assert per_class(raw) == COUNTS and raw.duplicates == 2
    with (tmp_path / "m.csv").open("a", newline="") as f:
        csv.writer(f).writerow(("pool/alias.png", "dog"))
    with pytest.raises(DataError, match=r"alias.png \(class 'dog'\) are one file through a link"):
        load_raw(str(tmp_path / "m.csv"))
