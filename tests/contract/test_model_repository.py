import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from dynadapter.contract.model_repository import (
    Manifest,
    ModelLoadError,
    load_model,
    new_manifest,
    read_manifest,
    write_manifest,
)
from tests.support.tiny_onnx_model import NUM_EXITS, TinyWeights, write_model_version


@pytest.fixture
def repo(tmp_path: Path, model_repo: Path) -> Path:
    """A private copy of the tiny repository that a test may break."""
    shutil.copytree(model_repo, tmp_path / "repo")
    return tmp_path / "repo"


def edit_manifest(repo: Path, change: Callable[[dict], None]) -> None:
    path = repo / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_loads_a_valid_version(repo: Path) -> None:
    model = load_model(repo)
    assert model.manifest.name == "tiny"
    assert model.manifest.num_exits == NUM_EXITS
    assert [p.name for p in model.segment_paths] == [f"segment_{k}.onnx" for k in range(NUM_EXITS)]
    assert model.manifest.modes["accurate"].thresholds == (0.95, 0.9)


def test_picks_the_highest_numeric_version(tmp_path: Path, weights: TinyWeights) -> None:
    for version in ("2", "10", "9"):
        write_model_version(tmp_path, weights, version=version)
    assert load_model(tmp_path).path.name == "10"
    assert load_model(tmp_path, "tiny", "9").path.name == "9"


def test_sha256_mismatch_refuses_with_one_clear_line(repo: Path) -> None:
    segment = repo / "tiny" / "1" / "segment_1.onnx"
    segment.write_bytes(segment.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError) as err:
        load_model(repo)
    message = str(err.value)
    assert "segment_1.onnx: sha256 mismatch" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.pop("labels"), "labels: Field required"),
        (lambda m: m["segments"][0].pop("sha256"), "segments.0.sha256: Field required"),
        (lambda m: m["preprocessing"].pop("mean"), "preprocessing.mean: Field required"),
        (lambda m: m["calibration"].pop("budgets"), "calibration.budgets: Field required"),
        (lambda m: m.update(schema_version=2), "unsupported schema_version 2"),
        (lambda m: m["modes"].pop("fast"), "missing mode(s) fast"),
        (lambda m: m["modes"]["fast"].update(thresholds=[0.5]), "must have 2 values"),
        (lambda m: m["preprocessing"].update(interpolation="lanczos"), "preprocessing.interpolation"),
        (lambda m: m["segments"][1].update(file="../evil.onnx"), "segments.1.file"),
        (lambda m: m["segments"][1].update(head_gflops=1.0), "head_gflops cannot exceed its gflops"),
        (lambda m: m["segments"][0].update(head_gflops=-1), "segments.0.head_gflops"),
    ],
)
def test_invalid_manifest_is_refused(repo: Path, change: Callable[[dict], None], expected: str) -> None:
    edit_manifest(repo, change)
    with pytest.raises(ModelLoadError, match="invalid manifest") as err:
        load_model(repo)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_segment_file(repo: Path) -> None:
    (repo / "tiny" / "1" / "segment_2.onnx").unlink()
    with pytest.raises(ModelLoadError, match="segment_2.onnx: cannot read segment"):
        load_model(repo)


def test_unreadable_manifest(repo: Path) -> None:
    (repo / "tiny" / "1" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unreadable manifest"):
        load_model(repo)


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [("other", None, "model 'other' not found"), ("tiny", "7", "version '7' of model 'tiny' not found")],
)
def test_unknown_model_or_version(repo: Path, name: str, version: str | None, expected: str) -> None:
    with pytest.raises(ModelLoadError, match=expected):
        load_model(repo, name, version)


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="holds no model"):
        load_model(tmp_path)


# -- precisions (docs/model-repository.md, "Precisions") ----------------------------------------------------------


def _with_precision(manifest: dict, key: str = "int8-openvino", **changes: object) -> dict:
    entry = {
        "precision": "int8",
        "runtime": "openvino",
        "segments": [
            {"index": k, "file": f"segment_{k}.int8.xml", "sha256": "a" * 64, "weights": f"segment_{k}.int8.bin"}
            for k in range(len(manifest["segments"]))
        ],
        "calibration": manifest["calibration"],
        "modes": {**manifest["modes"], "balanced": {"threshold": 0.77, "accuracy": 0.7, "flops_fraction": 0.6}},
        "parity": {"max_abs_diff": 0.3, "argmax_agreement": [0.99, 1.0, 1.0]},
        **changes,
    }
    return {**manifest, "precisions": {key: entry}}


def test_a_precision_is_served_with_its_own_files_and_modes(model_repo: Path) -> None:
    raw = json.loads((model_repo / "tiny" / "1" / "manifest.json").read_text())
    manifest = Manifest.model_validate(_with_precision(raw))
    assert "int8-openvino" in manifest.precision_keys and manifest.precision_keys[0] == "fp32-onnx"
    served = manifest.at_precision("int8-openvino")
    assert [s.file for s in served.segments] == ["segment_0.int8.xml", "segment_1.int8.xml", "segment_2.int8.xml"]
    assert served.modes["balanced"].threshold == 0.77 and manifest.modes["balanced"].threshold == 0.6
    # FLOPs stay the model's multiply-adds, whatever the precision.
    assert [s.cumulative_gflops for s in served.segments] == [s.cumulative_gflops for s in manifest.segments]
    assert manifest.at_precision("fp32-onnx") is manifest


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({}, "fp32-openvino", "the key must be 'int8-openvino'"),
        ({"modes": {"fast": {"threshold": 0.3, "accuracy": 0.6, "flops_fraction": 0.45}}}, None, "missing mode"),
        ({"precision": "int4"}, None, "precision"),
    ],
)
def test_inconsistent_precision_entries_are_refused(
    model_repo: Path, changes: dict, key: str | None, message: str
) -> None:
    raw = json.loads((model_repo / "tiny" / "1" / "manifest.json").read_text())
    bad = _with_precision(raw, key or "int8-openvino", **changes)
    with pytest.raises(ValidationError, match=message):
        Manifest.model_validate(bad)


def test_a_precision_file_that_changed_is_refused(model_repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tiny" / "1"
    shutil.copytree(model_repo / "tiny" / "1", folder)
    raw = json.loads((folder / "manifest.json").read_text())
    for k in range(3):
        (folder / f"segment_{k}.int8.xml").write_text("<net/>")
        (folder / f"segment_{k}.int8.bin").write_bytes(b"")
    (folder / "manifest.json").write_text(json.dumps(_with_precision(raw)))
    with pytest.raises(ModelLoadError, match=r"segment_0\.int8\.xml: sha256 mismatch"):
        load_model(tmp_path, precision="int8-openvino")
    assert load_model(tmp_path).precision == "fp32-onnx"  # the fp32 files are still fine


def test_bootstrap_spread_round_trips_and_older_manifests_load_without_it(repo: Path, tmp_path: Path) -> None:
    old = load_model(repo).manifest  # written without spread or resamples, as before the bootstrap
    assert old.modes["balanced"].spread is None and old.calibration.resamples is None
    spread = {
        "single_threshold": 0.595,
        "threshold_low": 0.0,
        "threshold_high": 0.595,
        "threshold_std": 0.23,
        "accuracy_low": 0.825,
        "accuracy_high": 0.975,
        "accuracy_std": 0.045,
        "oob_accuracy": 0.879,
    }
    fields = old.model_dump(exclude_none=True)
    fields["modes"]["balanced"]["spread"] = spread
    fields["calibration"] |= {"resamples": 200, "resample_seed": 0}
    written = write_manifest(new_manifest(**fields), tmp_path)  # the writer knows the new fields
    back = read_manifest(written)
    assert back.modes["balanced"].spread is not None
    assert back.modes["balanced"].spread.model_dump() == spread
    assert (back.calibration.resamples, back.calibration.resample_seed) == (200, 0)
    assert back == new_manifest(**fields)
