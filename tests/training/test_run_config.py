"""`RunConfig`: the one reader and writer of a run directory's config.json."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import pytest

from dynadapter.contract import Preprocessing
from dynadapter.errors import RunDirError
from dynadapter.models.balanced_heads import balanced_head_configs
from dynadapter.models.dynamic_vit import DynamicViTConfig
from dynadapter.training.calibration import BOOTSTRAP_RESAMPLES, recorded_resampling
from dynadapter.training.commands import train_options
from dynadapter.training.options import PREDATING, TrainOptions
from dynadapter.training.run_dir import CONFIG, RUN_CONFIG_VERSION, BackboneSpec, RunConfig, read_config, write_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "demo" / "dinov2-mnist"


def a_config() -> RunConfig:
    return RunConfig(
        data="builtin:digits",
        labels=["0", "1"],
        preprocessing=Preprocessing.square(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        backbone=BackboneSpec("vit_tiny_patch16_224", 16, kwargs={"depth": 4}, init_seed=3),
        model=DynamicViTConfig(2, [2, 4], petl="lora", head_dropout=0.1),
        train=TrainOptions(data="builtin:digits", out=Path("runs/a"), seed=3, epochs=1, loss_gamma=1.5),
        data_summary={"layout": "builtin", "duplicates": 0},
        world_size=2,
        device="cpu",
        device_name="a CPU",
    )


def test_a_config_written_reads_back_equal(tmp_path: Path) -> None:
    config = a_config()
    write_config(tmp_path, config)
    assert read_config(tmp_path) == config
    written = json.loads((tmp_path / CONFIG).read_text())
    assert written["version"] == RUN_CONFIG_VERSION == 2
    assert written["model"] == asdict(config.model) and written["train"] == config.train.record()
    assert read_config(tmp_path).backbone == BackboneSpec("vit_tiny_patch16_224", 16, kwargs={"depth": 4}, init_seed=3)
    assert read_config(tmp_path).model.heads == balanced_head_configs(2)
    assert (read_config(tmp_path).train.loss_gamma, read_config(tmp_path).obsolete_train) == (1.5, {})


def v1_train(**changes: object) -> dict[str, object]:
    """A version 1 ``train`` record as the trainer wrote it before the options were flat (the demo's)."""
    recorded = json.loads((DEMO / CONFIG).read_text())["train"]
    return {**recorded, **changes}


@pytest.mark.parametrize("run_dir", sorted(p.parent for p in (REPO / "demo").glob("*/config.json")), ids=str)
def test_the_committed_demo_configs_are_migrated_from_version_1(run_dir: Path) -> None:
    """Written as version 1 (``"format": 1``, grouped training options): every option maps to today's, the
    knobs fixed since hold today's values, so nothing is obsolete."""
    recorded = json.loads((run_dir / CONFIG).read_text())
    config = read_config(run_dir)
    assert "version" not in recorded and recorded["format"] == 1 and config.version == RUN_CONFIG_VERSION
    assert config.data == recorded["data"] and config.labels == recorded["labels"]
    assert config.backbone == BackboneSpec(**recorded["backbone"]) and config.model == DynamicViTConfig(
        **recorded["model"]
    )
    assert config.preprocessing.model_dump(mode="json") == recorded["preprocessing"]
    old = recorded["train"]
    assert (config.train.loss_gamma, config.train.distill) == (
        old["prioritization"]["gamma"],
        old["prioritization"]["distill_weight"],
    )
    assert (config.train.forward_sparsity, config.train.backward_sparsity) == (
        old["forward_sparsity"]["shallow"],
        old["backward_sparsity"]["rate"],
    )
    grouped = {"prioritization", "forward_sparsity", "backward_sparsity"}
    flat = config.train.record()
    assert {k: v for k, v in old.items() if k not in grouped} == {k: flat[k] for k in old if k not in grouped}
    assert config.obsolete_train == {}


def test_the_demo_config_is_the_dinov2_mnist_run() -> None:
    config = read_config(DEMO)
    assert (config.data, config.labels, config.backbone.name) == (
        "builtin:mnist",
        [str(i) for i in range(10)],
        "builtin:dinov2-s14",
    )
    assert (config.world_size, config.device, config.data_summary) == (1, None, None)
    assert (config.model.exits, config.train.seed, config.train.epochs) == ([3, 6, 9, 12], 0, 10)


def write_v1(tmp_path: Path, train: dict[str, object]) -> Path:
    recorded = json.loads((DEMO / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps(recorded | {"train": train}))
    return tmp_path / CONFIG


def test_a_version_1_option_without_a_counterpart_is_kept_and_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-written version 1 file with a distillation temperature and gradient rescaling other than the
    values the trainer has used since, and an option that no longer exists: they are kept as recorded in
    ``obsolete_train`` (the warning names them), the rest reads as today's options, the defaults fill in
    what version 1 did not record, and writing it back keeps them."""
    train = v1_train(
        prioritization={"gamma": 0.5, "distill_weight": 0.25, "temperature": 4.0},
        backward_sparsity={"rate": 0.3, "rescale": True},
        forward_sparsity={"shallow": 0.1, "deep": 0.0},
        color_jitter=0.4,
    )
    del train["seed"]
    path = write_v1(tmp_path, train)
    with caplog.at_level(logging.WARNING, logger="dynadapter.training.run_dir"):
        config = read_config(tmp_path)
    assert config.obsolete_train == {
        "prioritization.temperature": 4.0,
        "backward_sparsity.rescale": True,
        "color_jitter": 0.4,
    }
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} records training options this dynadapter no longer has (kept, not applied): "
        "prioritization.temperature=4.0, backward_sparsity.rescale=True, color_jitter=0.4"
    ]
    t = config.train
    assert (t.loss_gamma, t.distill, t.backward_sparsity, t.forward_sparsity) == (0.5, 0.25, 0.3, 0.1)
    assert (t.seed, t.calibration_resamples, t.val_size) == (0, 200, 0.15)  # not recorded: today's defaults
    write_config(tmp_path, config)
    assert read_config(tmp_path) == config and json.loads(path.read_text())["version"] == RUN_CONFIG_VERSION


def test_a_version_1_run_resumes_with_its_recorded_options(tmp_path: Path) -> None:
    write_v1(tmp_path, v1_train(prioritization={"gamma": 0.5, "distill_weight": 0.0, "temperature": 2.0}))
    opts = train_options(argparse.Namespace(resume=tmp_path))
    assert (opts.resume, opts.out, opts.loss_gamma, opts.epochs, opts.data) == (
        tmp_path,
        tmp_path,
        0.5,
        10,
        "builtin:mnist",
    )


def test_a_run_recorded_before_calibration_resamples_calibrates_with_the_old_default() -> None:
    assert recorded_resampling(read_config(DEMO).train) == {"resamples": BOOTSTRAP_RESAMPLES, "seed": 0}


def test_a_run_recorded_before_the_transfer_options_reads_as_it_ran_whatever_the_defaults() -> None:
    """The demo predates LP-FT, WiSE-FT and calibration on corrupted copies: it ran with random heads, no
    interpolation and clean val images, and reads so (`PREDATING`) even where today's default differs."""
    recorded = json.loads((DEMO / CONFIG).read_text())["train"]
    assert not set(PREDATING) & set(recorded)
    train = read_config(DEMO).train
    assert (train.head_init, train.wise_ft, train.calibration_corrupted) == ("random", False, 0)
    assert {k: getattr(train, k) for k in PREDATING} == PREDATING


def test_a_new_run_records_every_option_so_predating_values_never_apply_to_it(tmp_path: Path) -> None:
    write_config(tmp_path, a_config())
    recorded = json.loads((tmp_path / CONFIG).read_text())["train"]
    assert set(PREDATING) <= set(recorded)


def write_edited(tmp_path: Path, **fields: object) -> Path:
    write_config(tmp_path, a_config())
    recorded = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps(recorded | fields))
    return tmp_path / CONFIG


def test_a_newer_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write_edited(tmp_path, version=3)
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == (
        f"{path}: version: Value error, version 3 is not one this dynadapter reads (1 to 2): upgrade dynadapter"
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


def test_a_version_2_train_or_model_that_does_not_fit_is_refused_naming_it(tmp_path: Path) -> None:
    """Version 2 is not migrated: a grouped option there is an unknown option, not an old one."""
    recorded = a_config().model_dump(mode="json")
    path = write_edited(tmp_path, train=recorded["train"] | {"prioritization": {"gamma": 2.0}})
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == f"{path}: train.prioritization: Extra inputs are not permitted"
    path = write_edited(tmp_path, model=recorded["model"] | {"exits": [4, 2]})
    with pytest.raises(RunDirError) as refused:
        read_config(tmp_path)
    assert str(refused.value) == (
        f"{path}: model: Value error, exits must be strictly increasing block indices >= 1, got [4, 2]"
    )
