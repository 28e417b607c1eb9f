"""`RunConfig`: the one reader and writer of a run directory's config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynadapter.contract import Preprocessing
from dynadapter.errors import RunDirError
from dynadapter.training.run_dir import CONFIG, RUN_CONFIG_VERSION, BackboneSpec, RunConfig, read_config, write_config

REPO = Path(__file__).resolve().parents[2]


def a_config() -> RunConfig:
    return RunConfig(
        data="builtin:digits",
        labels=["0", "1"],
        preprocessing=Preprocessing.square(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        backbone=BackboneSpec("vit_tiny_patch16_224", 16, kwargs={"depth": 4}, init_seed=3),
        model={"num_classes": 2, "exits": [2, 4], "petl": "lora"},
        train={"seed": 3, "epochs": 1},
        data_summary={"layout": "builtin", "duplicates": 0},
        world_size=2,
        device="cpu",
        device_name="a CPU",
    )


def test_a_config_written_reads_back_equal(tmp_path: Path) -> None:
    config = a_config()
    write_config(tmp_path, config)
    assert read_config(tmp_path) == config
    assert json.loads((tmp_path / CONFIG).read_text())["version"] == RUN_CONFIG_VERSION == 1
    assert read_config(tmp_path).backbone == BackboneSpec("vit_tiny_patch16_224", 16, kwargs={"depth": 4}, init_seed=3)


@pytest.mark.parametrize("run_dir", sorted(p.parent for p in (REPO / "demo").glob("*/config.json")), ids=str)
def test_the_committed_demo_configs_load(run_dir: Path) -> None:
    """Written before RunConfig had a version (``"format": 1``), they read as version 1."""
    recorded = json.loads((run_dir / CONFIG).read_text())
    config = read_config(run_dir)
    assert "version" not in recorded and recorded["format"] == 1 and config.version == 1
    assert config.data == recorded["data"] and config.labels == recorded["labels"]
    assert config.backbone == BackboneSpec(**recorded["backbone"]) and config.model == recorded["model"]
    assert (
        config.train == recorded["train"] and config.preprocessing.model_dump(mode="json") == recorded["preprocessing"]
    )


def test_the_demo_config_is_the_dinov2_mnist_run() -> None:
    config = read_config(REPO / "demo" / "dinov2-mnist")
    assert (config.data, config.labels, config.backbone.name) == (
        "builtin:mnist",
        [str(i) for i in range(10)],
        "builtin:dinov2-s14",
    )
    assert (config.world_size, config.device, config.data_summary) == (1, None, None)


def write_edited(tmp_path: Path, **fields: object) -> Path:
    write_config(tmp_path, a_config())
    recorded = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps(recorded | fields))
    return tmp_path / CONFIG


def test_a_newer_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write_edited(tmp_path, version=2)
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == (
        f"{path}: version: Value error, version 2 is not one this dynadapter reads (1 to 1): upgrade dynadapter"
    )


def test_an_old_format_number_other_than_1_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path, a_config())
    recorded = json.loads((tmp_path / CONFIG).read_text())
    del recorded["version"]
    (tmp_path / CONFIG).write_text(json.dumps({"format": 7, **recorded}))
    with pytest.raises(RunDirError, match=r"format: Value error, version 7 is not one this dynadapter reads"):
        read_config(tmp_path)


def test_a_field_of_the_wrong_type_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_edited(tmp_path, world_size="two")
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == (
        f"{path}: world_size: Input should be a valid integer, unable to parse string as an integer"
    )
    path = write_edited(tmp_path, backbone={"name": "vit", "img_size": "big"})
    with pytest.raises(RunDirError, match=r"backbone\.img_size: Input should be a valid integer"):
        read_config(tmp_path)


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    path = write_edited(tmp_path, epochs=3)
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == f"{path}: epochs: Extra inputs are not permitted"


def test_labels_in_any_script_round_trip(tmp_path: Path) -> None:
    config = a_config().model_copy(update={"labels": ["café", "猫"]})
    write_config(tmp_path, config)
    assert read_config(tmp_path).labels == ["café", "猫"]
