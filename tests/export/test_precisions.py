"""`dynadapter export --precision fp32,int8`: OpenVINO IR fp32 and NNCF int8 segments, each calibrated on its own
logits over the run's calibration set (here with ``--calibration-corrupted 1``: val then one corrupted copy)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dynadapter.contract import load_model
from dynadapter.errors import ExportError
from dynadapter.export import precisions
from dynadapter.export.exporter import export_run
from dynadapter.export.precisions import (
    CALIBRATION_IMAGES,
    calibration_images,
    chained_openvino_logits,
    parse_precisions,
    split_images,
)
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training.calibration import calibrate, recorded_resampling, sweep
from dynadapter.training.run_dir import load_run
from tests.support.tiny import train_tiny_run

pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny run calibrated on val and one corrupted copy, exported in fp32 and int8, with every logits
    array the export's chained OpenVINO segments produced (``{xml file names: logits [K, N, C]}``): int8
    kernels are not bitwise reproducible across compilations, so the test reads the export's own logits,
    not a rerun's."""
    root = tmp_path_factory.mktemp("precisions")
    run = train_tiny_run(root / "run", epochs=1, calibration_corrupted=1)
    seen: list[tuple[tuple[str, ...], np.ndarray]] = []

    def recording(xml_paths, images, batch=64):
        logits = chained_openvino_logits(xml_paths, images, batch)
        seen.append((tuple(Path(p).name for p in xml_paths), logits))
        return logits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precisions, "chained_openvino_logits", recording)
        # A 1-epoch tiny model is near chance, so any int8 accuracy drop is allowed here; the bound is
        # checked on the demo model (docs/results.md).
        folder = export_run(run, root / "repo", name="tiny", version="1", precisions=["fp32", "int8"],
                            int8_max_accuracy_drop=1.0)  # fmt: skip
    return run, folder, json.loads((folder / "manifest.json").read_text()), seen


def test_each_precision_has_its_files_with_sha256(exported) -> None:
    _, folder, manifest, _ = exported
    assert set(manifest["precisions"]) == {"fp32-openvino", "int8-openvino"}
    for key, entry in manifest["precisions"].items():
        precision = key.split("-")[0]
        assert [s["file"] for s in entry["segments"]] == [f"segment_{k}.{precision}.xml" for k in range(4)]
        for segment in entry["segments"]:
            for name, digest in ((segment["file"], segment["sha256"]), (segment["weights"], segment["weights_sha256"])):
                assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert not (folder / ".ungated").exists()  # the gate-free sources are not left behind
    assert load_model(folder.parents[1], "tiny", precision="int8-openvino").precision == "int8-openvino"


def test_fp32_ir_matches_pytorch_and_int8_records_its_agreement(exported) -> None:
    _, _, manifest, _ = exported
    fp32, int8 = manifest["precisions"]["fp32-openvino"]["parity"], manifest["precisions"]["int8-openvino"]["parity"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == [1.0] * 4
    assert len(int8["argmax_agreement"]) == 4 and all(0 <= a <= 1 for a in int8["argmax_agreement"])
    assert int8["max_accuracy_drop"] == 1.0


def test_int8_is_calibrated_on_its_own_logits_over_the_runs_calibration_set(exported) -> None:
    run_dir, _, manifest, seen = exported
    run = load_run(run_dir)
    val_images, val_targets = split_images(run, "val")
    images, targets = calibration_images(run)
    # the calibration set: the validation split, then its one corrupted copy
    clean = len(val_targets)
    assert len(targets) == 2 * clean and np.array_equal(targets, np.tile(val_targets, 2))
    np.testing.assert_array_equal(images[:clean], val_images)
    assert not np.array_equal(images[clean:], val_images)
    entry = manifest["precisions"]["int8-openvino"]
    int8_files = tuple(s["file"] for s in entry["segments"])
    # the export's int8 logits on the calibration set (its parity check chains random images, the gate val)
    [logits] = [lg for files, lg in seen if files == int8_files and lg.shape[1] == len(targets)]
    own = calibrate(
        logits,
        targets,
        deployed_cumulative_gflops(run.model),
        early_heads_gflops(run.model),
        **recorded_resampling(run.config.train),
    )
    copies = {"val_samples": clean, "corrupted_copies": 1, "corrupted_severities": [1, 2]}
    assert entry["calibration"] == json.loads(json.dumps({**own["calibration"], **copies}))
    assert {m: v["threshold"] for m, v in entry["modes"].items()} == {
        m: v["threshold"] for m, v in own["modes"].items()
    }
    # each mode's accuracy at its threshold on the clean images and on the copy alone
    cum = deployed_cumulative_gflops(run.model)
    for mode in entry["modes"].values():
        [val] = sweep(logits[:, :clean], targets[:clean], cum, [mode["threshold"]])
        [corrupted] = sweep(logits[:, clean:], targets[clean:], cum, [mode["threshold"]])
        assert (mode["val_accuracy"], mode["corrupted_accuracy"]) == (val["accuracy"], corrupted["accuracy"])
    # The modes are rows of that table (the bootstrap's median choice), each with its spread.
    table = {row["threshold"]: row for row in entry["calibration"]["table"]}
    for mode in entry["modes"].values():
        row = table[mode["threshold"]]
        assert (mode["accuracy"], mode["flops_fraction"]) == (row["accuracy"], row["flops_fraction"])
        assert mode["spread"]["threshold_low"] <= mode["threshold"] <= mode["spread"]["threshold_high"]
    assert entry["calibration"]["num_samples"] == 2 * clean
    # Not the fp32 table: int8 confidences differ, so the swept accuracies do too.
    assert [r["accuracy"] for r in entry["calibration"]["table"]] != [
        r["accuracy"] for r in manifest["calibration"]["table"]
    ]


def test_fp32_ir_chooses_the_runs_own_thresholds_and_the_gate_compares_clean_val(exported) -> None:
    """fp32 IR answers as PyTorch does, so on the same calibration set it chooses the run's own modes; the
    int8 gate compares each mode's accuracy on the clean validation images, not on the copies."""
    _, _, manifest, _ = exported
    fp32, int8 = manifest["precisions"]["fp32-openvino"], manifest["precisions"]["int8-openvino"]
    assert {m: v["threshold"] for m, v in fp32["modes"].items()} == {
        m: v["threshold"] for m, v in manifest["modes"].items()
    }
    assert fp32["calibration"]["num_samples"] == manifest["calibration"]["num_samples"]
    gate = int8["parity"]["gate"]
    assert gate["fp32_mode_accuracy"] == {m: v["val_accuracy"] for m, v in fp32["modes"].items()}
    assert gate["mode_accuracy"] == {m: v["val_accuracy"] for m, v in int8["modes"].items()}


def test_the_int8_calibration_set_is_recorded(exported) -> None:
    run_dir, _, manifest, _ = exported
    record = manifest["precisions"]["int8-openvino"]["quantization"]
    images = record["calibration_set"]
    assert (images["data"], images["split"]) == ("builtin:digits", "train")
    assert images["num_images"] == CALIBRATION_IMAGES == len(set(images["indices"]))
    assert "nncf" in record and "openvino" in record


def test_unknown_precision_is_a_user_error() -> None:
    assert parse_precisions("int8") == ["fp32", "int8"]
    with pytest.raises(ExportError, match="choose from fp32, int8"):
        parse_precisions("fp32,int4")


def test_ir_segments_chain_like_the_manifest_says(exported) -> None:
    _, folder, manifest, _ = exported
    images = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    logits = chained_openvino_logits([folder / s["file"] for s in manifest["precisions"]["fp32-openvino"]["segments"]],
                                     images)  # fmt: skip
    assert logits.shape == (4, 3, 10)
