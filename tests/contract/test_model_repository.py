import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dynadapter.contract.model_repository import ModelLoadError, load_model
from tests.service.tiny_onnx_model import NUM_EXITS, TinyWeights, write_model_version


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
