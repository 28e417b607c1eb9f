"""`dynadapter train --head-init standardised` (training/head_init.py): each linear or MLP head's own norm
starts so that its features have mean 0 and standard deviation 1 per feature on the train split; a
transformer head's norm and the backbone's norm of the last exit are left as they are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import HeadConfig
from dynadapter.training import run_dir as rd
from dynadapter.training.data import ImageDataset, run_split
from dynadapter.training.head_init import MIN_STD, standardise_heads
from dynadapter.training.linear_probe import head_features
from tests.support.tiny import randomize_trainable, train_tiny_run

HEADS = "transformer:1,mlp:2,mlp:1,linear"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a learning rate too small to move anything: the checkpoint holds the initialisation
    return train_tiny_run(tmp_path_factory.mktemp("std") / "r", heads=HEADS, head_init="standardised", lr=1e-12)


def train_split(run: Path) -> ImageDataset:
    config = rd.read_config(run)
    return ImageDataset(run_split(run, config, "train"), config.preprocessing, config.train.max_pixels)


def assert_standardised(features: np.ndarray) -> None:
    np.testing.assert_allclose(features.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(features.std(0), 1.0, atol=1e-3)


def test_a_trained_run_starts_with_every_own_norm_standardised(run: Path) -> None:
    config = rd.read_config(run)
    assert config.train.head_init == "standardised"
    assert json.loads((run / rd.CONFIG).read_text())["train"]["head_init"] == "standardised"
    features, _ = head_features(rd.load_run(run).model, train_split(run))
    for x in features[1:3]:  # the mlp heads
        assert_standardised(x)
    # the transformer head's norm reads its own block, the last exit the backbone's frozen final norm
    for x in (features[0], features[-1]):
        assert not np.allclose(x.std(0), 1.0, atol=1e-2)


def test_standardising_scales_and_shifts_only_the_norms_and_keeps_the_pooled_answers_affine(run: Path) -> None:
    model = rd.load_run(run).model
    randomize_trainable(model, seed=3)  # norms with weights of either sign and offsets: the general case
    data = train_split(run)
    before, _ = head_features(model, data)
    others = {n: p.clone() for n, p in model.named_parameters() if ".norm." not in n}
    report = standardise_heads(model, data, workers=0)
    after, _ = head_features(model, data)
    assert [r["standardised"] for r in report] == [False, True, True, False]
    for k in (1, 2):
        std = before[k].std(0)
        assert report[k]["std_before"] == pytest.approx(float(np.median(np.maximum(std, MIN_STD))), rel=1e-6)
        # per feature, the new features are the old ones' standard score; a near-constant one is scaled by
        # 1 / MIN_STD at most
        expected = (before[k] - before[k].mean(0)) / np.maximum(std, MIN_STD)
        np.testing.assert_allclose(after[k], expected, atol=2e-3)
        assert_standardised(after[k][:, std >= MIN_STD])
    for k in (0, 3):
        np.testing.assert_array_equal(after[k], before[k])
    for name, p in model.named_parameters():
        if name in others:
            torch.testing.assert_close(p, others[name], rtol=0, atol=0)


def test_heads_without_a_norm_to_standardise_are_named_and_nothing_changed_is_a_warning(
    run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = rd.read_config(run)
    kinds = [HeadConfig("transformer")] * 3 + [HeadConfig("linear")]
    model = rd.build_model(config.backbone, dataclasses.replace(config.model, heads=kinds))
    before = {n: p.clone() for n, p in model.named_parameters()}
    with caplog.at_level("INFO", logger="dynadapter.training.head_init"):
        report = standardise_heads(model, train_split(run), workers=0)
    assert [r["standardised"] for r in report] == [False] * 4
    assert "exit after block 1: median feature std" in caplog.text and "left as is (a transformer head)" in caplog.text
    assert "exit after block 4" in caplog.text and "left as is (the backbone's norm)" in caplog.text
    assert "--head-init standardised changed nothing" in caplog.text
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=0)


def test_an_empty_train_split_is_refused(run: Path) -> None:
    model = rd.load_run(run).model
    empty = dataclasses.replace(train_split(run), indices=np.arange(0))
    with pytest.raises(ConfigError, match="train split"):
        standardise_heads(model, empty, workers=0)
